#!/usr/bin/env python3
"""Sends COUNT malformed and odd packets (scapy) at the virtual addresses:
fuzzed IPv4 options and TCP flags and options, truncated TCP/UDP/ICMP
headers, tiny and overlapping fragments, IPv6 extension header chains and
fragments, ICMP and ICMPv6 errors quoting garbage or our own ports, packets
to hidden ports. Seeded, so a run can be repeated. Usage:
  malformed.py V4ADDR V6ADDR COUNT [SEED]"""
import random, sys
from scapy.all import (IP, IPv6, TCP, UDP, ICMP, ICMPv6DestUnreach, ICMPv6EchoRequest,
                       IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                       IPv6ExtHdrRouting, IPOption_EOL, IPOption_NOP, IPOption_Router_Alert,
                       IPOption_RR, IPOption_Timestamp, Raw, conf, fragment, fuzz, send)

conf.verb = 0
v4, v6, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
ports = [9000, 7, 8000, 20000, 24999, 29999, 1, 65535]


def port():
    return rng.choice(ports) if rng.random() < 0.8 else rng.randrange(65536)


def junk(n):
    return bytes(rng.randrange(256) for _ in range(rng.randrange(n + 1)))


def tcp():
    opts = rng.choice([[], [("MSS", rng.randrange(65536))], [("WScale", rng.randrange(256))],
                       [("SAck", (rng.randrange(2**32), rng.randrange(2**32)))],
                       [("NOP", None)] * rng.randrange(12), [("Timestamp", (1, 2))]])
    return TCP(sport=rng.randrange(1, 65536), dport=port(), flags=rng.randrange(256),
               seq=rng.randrange(2**32), ack=rng.randrange(2**32), options=opts,
               window=rng.randrange(65536))


def v4_packet():
    kind = rng.randrange(9)
    if kind == 0:
        return fuzz(IP(dst=v4) / TCP(dport=port()))
    if kind == 1:
        opts = [rng.choice([IPOption_NOP(), IPOption_RR(), IPOption_Timestamp(),
                            IPOption_Router_Alert(), IPOption_EOL()]) for _ in range(rng.randrange(1, 5))]
        return IP(dst=v4, options=opts) / tcp() / junk(64)
    if kind == 2:  # a TCP header cut short, claiming options past the end
        return IP(dst=v4, proto=6) / Raw(bytes(tcp())[: rng.randrange(1, 20)])
    if kind == 3:
        return IP(dst=v4, proto=17) / Raw(junk(7))
    if kind == 4:  # UDP length field lying
        return IP(dst=v4) / UDP(dport=port(), len=rng.randrange(65536)) / junk(32)
    if kind == 5:  # tiny first fragment, then one overlapping it
        p = IP(dst=v4, id=rng.randrange(65536)) / tcp() / junk(200)
        frags = fragment(p, fragsize=8)
        extra = IP(dst=v4, id=p.id, frag=0, flags="MF", proto=6) / Raw(junk(16))
        return frags[:3] + [extra]
    if kind == 6:  # ICMP error quoting garbage, or a packet to one of our ports
        quoted = rng.choice([junk(40), bytes(IP(src=v4, dst="10.200.1.5") / UDP(sport=port())),
                             bytes(IP(src="10.200.1.5", dst=v4) / tcp())[: rng.randrange(20, 40)]])
        return IP(dst=v4) / ICMP(type=rng.choice([3, 11, 12, 5]), code=rng.randrange(16)) / quoted
    if kind == 7:
        return IP(dst=v4) / ICMP(type=rng.randrange(256)) / junk(64)
    return IP(dst=v4, flags=rng.randrange(8), frag=rng.randrange(8192), proto=rng.choice([6, 17, 1])) / junk(100)


def v6_packet():
    kind = rng.randrange(6)
    ext = rng.choice([IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(addresses=[]),
                      IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()])
    if kind == 0:
        return IPv6(dst=v6) / ext / tcp() / junk(64)
    if kind == 1:  # a chain that runs past the packet
        return IPv6(dst=v6, nh=0) / Raw(bytes([60, rng.randrange(256)]) + junk(6))
    if kind == 2:
        return fragment6_like()
    if kind == 3:
        quoted = rng.choice([junk(48), bytes(IPv6(src=v6, dst="fd00:200:1::5") / UDP(sport=port()))])
        return IPv6(dst=v6) / ICMPv6DestUnreach(code=rng.randrange(8)) / quoted
    if kind == 4:
        return IPv6(dst=v6, nh=6) / Raw(bytes(tcp())[: rng.randrange(1, 20)])
    return IPv6(dst=v6) / ICMPv6EchoRequest(data=junk(64))


def fragment6_like():
    first = IPv6(dst=v6) / IPv6ExtHdrFragment(id=rng.randrange(2**32), m=1, offset=0, nh=6) / Raw(bytes(tcp())[:8])
    later = IPv6(dst=v6) / IPv6ExtHdrFragment(id=first[IPv6ExtHdrFragment].id, m=0, offset=rng.randrange(4), nh=6) / Raw(junk(24))
    return [first, later]


packets = []
while len(packets) < count:
    p = v4_packet() if rng.random() < 0.6 else v6_packet()
    packets.extend(p if isinstance(p, list) else [p])
send(packets[:count], inter=0)
print(f"malformed: {min(count, len(packets))} packets sent")
