#!/usr/bin/env python3
"""Clients of tests/netns/nodes.sh, from many source addresses at once.

  nodes_client.py ask VADDR PORT COUNT SRC...
      COUNT http-info requests from each SRC; one JSON line per request:
      {"src", "ok", "app", "node", "error"}.
  nodes_client.py hold VADDR PORT READY STOP SRC...
      One echo connection from each SRC, a numbered line every 100 ms, each
      answered within 3 s or the connection counts as broken. Writes READY
      once every connection is up; when the file STOP appears, each side
      half-closes and must read the rest and the end. One JSON line per SRC:
      {"src", "ok", "pings", "error"}.
  nodes_client.py summary FILE...
      Of the lines of ask or hold: {"failed": [SRC...], "wrong_app": [SRC...],
      "split": [SRC...] (answered by more than one node), "per_node": {NODE: N},
      "node_of": {SRC: NODE}}. An app is right when it is red for a source
      whose last byte is below 128, blue for the others.
"""
import asyncio
import json
import os
import sys


async def ask_once(vaddr, port, src):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(vaddr, port, local_addr=(src, 0)), 5)
        writer.write(b"GET / HTTP/1.1\r\nHost: vpm\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        info = json.loads(data.split(b"\r\n\r\n", 1)[1])
        return {"src": src, "ok": True, "app": info["app"], "node": info["node"], "error": ""}
    except Exception as e:  # every failure is a result to report
        return {"src": src, "ok": False, "app": "", "node": "", "error": repr(e)}


async def ask(vaddr, port, count, sources):
    limit = asyncio.Semaphore(64)

    async def one(src):
        async with limit:
            return await ask_once(vaddr, port, src)

    jobs = [one(s) for s in sources for _ in range(count)]
    for result in await asyncio.gather(*jobs):
        print(json.dumps(result))


async def hold_one(vaddr, port, src, up, stop):
    pings = 0
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(vaddr, port, local_addr=(src, 0)), 5)
        up.append(src)
        while not stop.is_set():
            line = f"{src} {pings}\n".encode()
            writer.write(line)
            echoed = await asyncio.wait_for(reader.readexactly(len(line)), 3)
            if echoed != line:
                raise RuntimeError(f"echoed {echoed!r}, sent {line!r}")
            pings += 1
            await asyncio.sleep(0.1)
        writer.write_eof()
        rest = await asyncio.wait_for(reader.read(), 5)
        if rest:
            raise RuntimeError(f"unexpected {rest!r} before the end")
        writer.close()
        return {"src": src, "ok": True, "pings": pings, "error": ""}
    except Exception as e:
        return {"src": src, "ok": False, "pings": pings, "error": repr(e)}


async def hold(vaddr, port, ready, stop_file, sources):
    up, stop = [], asyncio.Event()
    jobs = [asyncio.create_task(hold_one(vaddr, port, s, up, stop)) for s in sources]
    while len(up) + sum(j.done() for j in jobs) < len(sources):
        await asyncio.sleep(0.05)
    with open(ready, "w") as f:
        f.write(f"{len(up)}\n")
    while not os.path.exists(stop_file):
        await asyncio.sleep(0.05)
    stop.set()
    for result in await asyncio.gather(*jobs):
        print(json.dumps(result))


def summary(files):
    failed, wrong, per_node, nodes_of = [], [], {}, {}
    for name in files:
        with open(name) as f:
            for line in f:
                r = json.loads(line)
                if not r["ok"]:
                    failed.append(r["src"])
                    continue
                if "app" not in r:
                    continue
                want = "red" if int(r["src"].split(".")[-1]) < 128 else "blue"
                if r["app"] != want:
                    wrong.append(r["src"])
                per_node[r["node"]] = per_node.get(r["node"], 0) + 1
                nodes_of.setdefault(r["src"], set()).add(r["node"])
    print(json.dumps({
        "failed": failed, "wrong_app": wrong, "per_node": per_node,
        "split": [s for s, n in nodes_of.items() if len(n) > 1],
        "node_of": {s: min(n) for s, n in nodes_of.items()}}))


def main():
    verb = sys.argv[1]
    if verb == "summary":
        return summary(sys.argv[2:])
    vaddr, port = sys.argv[2], int(sys.argv[3])
    if verb == "ask":
        asyncio.run(ask(vaddr, port, int(sys.argv[4]), sys.argv[5:]))
    elif verb == "hold":
        asyncio.run(hold(vaddr, port, sys.argv[4], sys.argv[5], sys.argv[6:]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
