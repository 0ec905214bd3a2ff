#!/usr/bin/env python3
"""Opens COUNT TCP connections to HOST:PORT at once, sends one byte on each and
waits up to TIMEOUT seconds for it to come back. Prints one line:
  burst: COUNT opened, E echoed, F failed, T timed out; p50 X ms, p99 Y ms
and exits 0 only if every byte came back. With HOLD, the connections stay
open HOLD seconds more (after a line "holding"), so their cost can be seen.
Usage: burst.py HOST PORT COUNT [TIMEOUT [HOLD]]"""
import errno, resource, select, socket, sys, time

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
hold = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:  # root may raise the hard limit too
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 100), max(hard, count + 100)))
except (ValueError, OSError):
    if hard < count + 100:
        sys.exit(f"burst: {count} sockets need a file limit of {count + 100}; it is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, hard))
family = socket.AF_INET6 if ":" in host else socket.AF_INET
ep = select.epoll()
socks, started, latency = {}, {}, []
failed = 0
t0 = time.monotonic()
for _ in range(count):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    err = s.connect_ex((host, port))
    if err not in (0, errno.EINPROGRESS):
        failed += 1
        s.close()
        continue
    socks[s.fileno()] = s
    started[s.fileno()] = time.monotonic()
    ep.register(s.fileno(), select.EPOLLOUT)
sent = set()
held = []
deadline = time.monotonic() + timeout
while socks and time.monotonic() < deadline:
    for fd, ev in ep.poll(0.1):
        s = socks[fd]
        if ev & (select.EPOLLERR | select.EPOLLHUP) and fd not in sent:
            failed += 1
        elif fd not in sent:
            s.send(b"x")
            sent.add(fd)
            ep.modify(fd, select.EPOLLIN)
            continue
        else:
            try:
                got = s.recv(1)
            except OSError:
                got = b""
            if got == b"x":
                latency.append(time.monotonic() - started[fd])
            else:
                failed += 1
        ep.unregister(fd)
        if hold:
            held.append(s)
        else:
            s.close()
        del socks[fd]
latency.sort()
pct = lambda p: latency[min(len(latency) - 1, int(len(latency) * p))] * 1000 if latency else 0
print(f"burst: {count} opened, {len(latency)} echoed, {failed} failed, {len(socks)} timed out; "
      f"p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, all in {time.monotonic() - t0:.1f} s")
if hold:
    print("holding", flush=True)
    time.sleep(hold)
sys.exit(0 if len(latency) == count else 1)
