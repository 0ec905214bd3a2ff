#!/usr/bin/python3
"""Independent check of a forward replay: IN (TUN side) against OUT (stack side).

Written separately from the C++ engine, from the configuration's meaning:
  * every packet from a client no app claims (unmatched = "reset") is absent;
  * every other packet is present, in order, and differs from its input only
    in the virtual address's port (p1 -> p2) and in checksum fields;
  * ICMP errors have the quoted packet's port translated the same way;
  * all packets of one (virtual address, p1, AID) use one p2, inside
    vpm.port_range, and different AIDs use different p2s.
Checksum correctness is left to tshark (it reassembles fragments first).

usage: verify.py CONFIG IN.pcap OUT.pcap
       verify.py --subsequence IN.pcap BACK.pcap DROPS
           BACK (a reverse replay of OUT) holds IN's records, byte for byte and
           in order, less exactly DROPS of them.
"""
import ipaddress
import struct
import sys
import tomllib

from scapy.utils import RawPcapReader


def frames(path):
    reader = RawPcapReader(path)
    link = reader.linktype
    for data, _meta in reader:
        yield link, bytes(data)


def ip_start(link, f):
    if link in (101, 12, 228, 229):
        return 0
    if link == 1:
        t = struct.unpack("!H", f[12:14])[0]
        return 14 if t in (0x0800, 0x86DD) else None
    raise SystemExit(f"verify.py: link type {link} not handled")


def parse(f, at):
    """-> dict(v6, src, dst, proto, l4 offset or None)"""
    if f[at] >> 4 == 4:
        ihl = (f[at] & 15) * 4
        frag = struct.unpack("!H", f[at + 6:at + 8])[0]
        return dict(src=ipaddress.ip_address(f[at + 12:at + 16]), dst=ipaddress.ip_address(f[at + 16:at + 20]),
                    proto=f[at + 9], l4=at + ihl if frag & 0x1FFF == 0 else None, v6=False)
    nh, off, l4ok = f[at + 6], at + 40, True
    while nh in (0, 43, 60, 44):
        if nh == 44:
            l4ok = struct.unpack("!H", f[off + 2:off + 4])[0] & 0xFFF8 == 0
            nh, off = f[off], off + 8
        else:
            nh, off = f[off], off + (f[off + 1] + 1) * 8
    return dict(src=ipaddress.ip_address(f[at + 8:at + 24]), dst=ipaddress.ip_address(f[at + 24:at + 40]),
                proto=nh, l4=off if l4ok else None, v6=True)


class Rules:
    def __init__(self, path):
        cfg = tomllib.load(open(path, "rb"))
        vpm = cfg.get("vpm", {})
        lo, hi = vpm.get("port_range", "20000-29999").split("-")
        self.range = (int(lo), int(hi))
        self.unmatched = vpm.get("unmatched", "reset")
        self.per_connection = vpm.get("allocation", "per-app") == "per-connection"
        self.listens = {}  # (addr, port, proto) -> [app]
        for app in cfg["app"]:
            app["pairs"], app["prefixes"] = [], []
            for c in app.get("clients", []):
                if c.startswith("[") or ("." in c and ":" in c):
                    host, port = c.rsplit(":", 1)
                    app["pairs"].append((ipaddress.ip_address(host.strip("[]")), int(port)))
                else:
                    app["prefixes"].append(ipaddress.ip_network(c))
            for l in app["listen"]:
                proto = 17 if l.endswith("/udp") else 6
                hostport = l.removesuffix("/udp").removesuffix("/tcp")
                host, port = hostport.rsplit(":", 1)
                key = (ipaddress.ip_address(host.strip("[]")), int(port), proto)
                self.listens.setdefault(key, []).append(app)
        self.vaddrs = {k[0] for k in self.listens}

    def classify(self, vaddr, p1, proto, client, cport):
        apps = self.listens[(vaddr, p1, proto)]
        for app in apps:
            if (client, cport) in app["pairs"]:
                return app
        best = None
        for app in apps:
            for p in app["prefixes"]:
                if client.version == p.version and client in p and (best is None or p.prefixlen > best[0]):
                    best = (p.prefixlen, app)
        if best:
            return best[1]
        return next((a for a in apps if a["name"] == self.unmatched), None)


def subsequence(full, part, drops):
    a, b = list(RawPcapReader(full)), list(RawPcapReader(part))
    j = 0
    for data, meta in a:
        if j < len(b) and bytes(b[j][0]) == bytes(data) and b[j][1] == meta:
            j += 1
    ok = j == len(b) and len(a) - len(b) == drops
    print(f"verify.py: {part}: {len(b)} of {len(a)} records of {full} in order, "
          f"{len(a) - len(b)} left out (expected {drops}): {'ok' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


def main():
    if sys.argv[1] == "--subsequence":
        subsequence(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    rules = Rules(sys.argv[1])
    ins = list(frames(sys.argv[2]))
    outs = list(frames(sys.argv[3]))
    p2_of = {}
    opened = set()
    j = 0
    problems = []
    checked = 0

    def note(i, msg):
        problems.append(f"input packet {i + 1}: {msg}")

    def expect_port(i, key, app, got):
        # per-app: one p2 per (vaddr, p1, AID); per-connection: one per client flow.
        owner = key[2] if rules.per_connection else app["aid"]
        lo, hi = rules.range
        want = p2_of.setdefault(key[:2] + (owner,), got)
        if got != want:
            note(i, f"p2 {got} but {owner} used {want} before")
        if not lo <= got <= hi:
            note(i, f"p2 {got} outside port_range")
        if not rules.per_connection:
            for other, port in p2_of.items():
                if other[:2] == key[:2] and other[2] != owner and port == got:
                    note(i, f"p2 {got} shared by aids {other[2]} and {owner}")

    for i, (link, fin) in enumerate(ins):
        at = ip_start(link, fin)
        moves = []   # (offset of a port field, (vaddr, p1), app)
        drop = False
        if at is not None:
            p = parse(fin, at)
            l4 = p["l4"]
            icmp = 58 if p["v6"] else 1
            if l4 is not None and p["proto"] in (6, 17):
                sport, dport = struct.unpack("!HH", fin[l4:l4 + 4])
                if p["dst"] in rules.vaddrs and (p["dst"], dport, p["proto"]) in rules.listens:
                    app = rules.classify(p["dst"], dport, p["proto"], p["src"], sport)
                    drop = app is None
                    moves.append((l4 + 2, (p["dst"], dport, (p["proto"], p["src"], sport)), app))
                elif p["src"] in rules.vaddrs and (p["src"], sport, p["proto"]) in rules.listens:
                    app = rules.classify(p["src"], sport, p["proto"], p["dst"], dport)
                    drop = app is None
                    moves.append((l4, (p["src"], sport, (p["proto"], p["dst"], dport)), app))
            elif l4 is not None and p["proto"] == icmp and fin[l4] in ((1, 2, 3, 4) if p["v6"] else (3, 4, 5, 11, 12)):
                q = parse(fin, l4 + 8)
                ql4 = q["l4"]
                if ql4 is not None and q["proto"] in (6, 17):
                    sport, dport = struct.unpack("!HH", fin[ql4:ql4 + 4])
                    if (q["dst"], dport, q["proto"]) in rules.listens:
                        app = rules.classify(q["dst"], dport, q["proto"], q["src"], sport)
                        moves.append((ql4 + 2, (q["dst"], dport, (q["proto"], q["src"], sport)), app))
                    elif (q["src"], sport, q["proto"]) in rules.listens:
                        app = rules.classify(q["src"], sport, q["proto"], q["dst"], dport)
                        moves.append((ql4, (q["src"], sport, (q["proto"], q["dst"], dport)), app))
                    drop = any(m[2] is None for m in moves)
        if rules.per_connection:
            # Only a client's packet to p1 opens a per-connection translation;
            # anything about a flow no client opened cannot be translated.
            for off, key, app in moves:
                inbound_opener = at is not None and off == l4 + 2 and p["proto"] in (6, 17)
                flow = key[:2] + (key[2],)
                if inbound_opener and app is not None:
                    opened.add(flow)
                elif flow not in opened:
                    drop = True
        if drop:
            continue
        if j >= len(outs):
            note(i, "missing from the output")
            break
        fout = outs[j][1]
        j += 1
        checked += 1
        if len(fout) != len(fin):
            note(i, "length changed")
            continue
        allowed = set()
        for off, key, app in moves:
            got = struct.unpack("!H", fout[off:off + 2])[0]
            expect_port(i, key, app, got)
            allowed |= {off, off + 1}
        diff = [k for k in range(len(fin)) if fin[k] != fout[k] and k not in allowed]
        # What may change besides ports: checksum fields (TCP +16, UDP +6, ICMP +2, quoted L4 checksum).
        for k in diff:
            p = parse(fin, at)
            sums = {p["l4"] + (16 if p["proto"] == 6 else 6 if p["proto"] == 17 else 2)} if p["l4"] is not None else set()
            if p["l4"] is not None and p["proto"] in (1, 58):
                q = parse(fin, p["l4"] + 8)
                if q["l4"] is not None:
                    sums.add(q["l4"] + (16 if q["proto"] == 6 else 6))
            if not any(s <= k <= s + 1 for s in sums):
                note(i, f"byte {k} changed, and it is neither a port nor a checksum")
                break
        if not moves and fin != fout:
            note(i, "changed although it is not multiplexed traffic")
    if j != len(outs):
        problems.append(f"output has {len(outs) - j} packets more than expected")
    for p in problems:
        print("verify.py:", p)
    print(f"verify.py: {sys.argv[3]}: {checked} packets checked, {len(ins) - checked} expected drops, "
          f"p2s {sorted(set(p2_of.values()))}: {'FAIL' if problems else 'ok'}")
    sys.exit(1 if problems else 0)


main()
