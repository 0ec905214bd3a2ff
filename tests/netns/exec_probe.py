#!/usr/bin/env python3
"""A server that says what the socket calls tell it, for tests/netns/exec.sh.

Run under `vpmtun exec`, it shows what an unmodified program sees:

  tcp ADDR PORT [--dup] [--exec-child] [--fork N]
      binds ADDR:PORT (IPv6 when ADDR has a colon; '::' is dual-stack), prints
      "listening <getsockname>" and answers each connection with one line:
      "pid=P peer=<accept> getpeername=<..> getsockname=<..> listening=<..>".
      --dup          serves on a dup3'd copy (the original closed)
      --close-others closes every other descriptor above 2 (close_range)
      --exec-child   execs a fresh interpreter that inherits the socket (and
                     closes every other descriptor above 2)
      --fork N       N pre-forked workers accept on the one socket
  sha ADDR PORT    reads each connection to its end, answers its sha256
  udp ADDR PORT    answers each datagram with "pid=P peer=<recvfrom>", from
                   recvfrom/sendto and recvmsg/sendmsg in turn
"""
import hashlib
import os
import socket
import sys


def fmt(addr):
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bound(addr, port, kind):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, kind)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    return s


def serve_tcp(s):
    listening = fmt(s.getsockname())
    while True:
        c, peer = s.accept()
        c.recv(1024)  # the client's line: closing with it unread would reset the connection
        line = (f"pid={os.getpid()} peer={fmt(peer)} getpeername={fmt(c.getpeername())} "
                f"getsockname={fmt(c.getsockname())} listening={fmt(s.getsockname())}\n")
        try:
            c.sendall(line.encode())
        finally:
            c.close()


def main():
    mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    opts = sys.argv[4:]
    if mode == "inherit":  # the --exec-child's child: the socket is descriptor `port`
        s = socket.socket(fileno=port)
        print(f"child listening {fmt(s.getsockname())}", flush=True)
        os.closerange(3, port)  # as a daemon does: nothing but its socket
        os.closerange(port + 1, 1 << 16)
        print("child closed the others", flush=True)
        serve_tcp(s)
    if mode == "udp":
        s = bound(addr, port, socket.SOCK_DGRAM)
        print(f"listening {fmt(s.getsockname())}", flush=True)
        turn = 0
        while True:
            if turn % 2 == 0:
                data, peer = s.recvfrom(65535)
                s.sendto(f"pid={os.getpid()} peer={fmt(peer)} via=recvfrom\n".encode(), peer)
            else:
                data, _, _, peer = s.recvmsg(65535)
                s.sendmsg([f"pid={os.getpid()} peer={fmt(peer)} via=recvmsg\n".encode()], [], 0, peer)
            turn += 1
    s = bound(addr, port, socket.SOCK_STREAM)
    s.listen(64)
    print(f"listening {fmt(s.getsockname())}", flush=True)
    if mode == "sha":
        while True:
            c, _ = s.accept()
            h = hashlib.sha256()
            while chunk := c.recv(1 << 16):
                h.update(chunk)
            c.sendall((h.hexdigest() + "\n").encode())
            c.close()
    if "--dup" in opts:
        fd = os.dup2(s.fileno(), 77, inheritable=False)  # dup3
        s.close()
        s = socket.socket(fileno=fd)
        print(f"dup listening {fmt(s.getsockname())}", flush=True)
    if "--close-others" in opts:
        os.closerange(3, s.fileno())
        os.closerange(s.fileno() + 1, 1 << 16)
        print("closed the others", flush=True)
    if "--exec-child" in opts:
        os.set_inheritable(s.fileno(), True)
        os.execv(sys.executable, [sys.executable, __file__, "inherit", addr, str(s.fileno())])
    if "--fork" in opts:
        for _ in range(int(opts[opts.index("--fork") + 1])):
            if os.fork() == 0:
                serve_tcp(s)
        os.wait()
    serve_tcp(s)


if __name__ == "__main__":
    main()
