#!/usr/bin/env python3
"""Holds many TCP connections open, for tools/bench/scale.sh.

  hold.py VADDR PORT COUNT STOP SRC...

Opens COUNT connections to VADDR:PORT (an echo service), spread over the
source addresses SRC, at most 1000 opening at once; each sends one byte and
reads it back, so the connection is established end to end. Prints
"held N (F failed) in S s" once all have been tried, then keeps them until
the file STOP exists, and checks that 1% of them, picked evenly, still echo.
"""
import asyncio
import os
import sys
import time


async def main():
    vaddr, port, count, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    sources = sys.argv[5:]
    limit = asyncio.Semaphore(1000)
    held, failed = [], []

    async def one(i):
        async with limit:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(
                    vaddr, port, local_addr=(sources[i % len(sources)], 0)), 30)
                w.write(b"x")
                await asyncio.wait_for(r.readexactly(1), 30)
                held.append((r, w))
            except Exception as e:
                failed.append(repr(e))

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    print(f"held {len(held)} ({len(failed)} failed) in {time.monotonic() - t0:.1f} s", flush=True)
    if failed:
        print(f"first failure: {failed[0]}", flush=True)
    while not os.path.exists(stop):
        await asyncio.sleep(0.2)
    alive = 0
    sample = held[:: max(1, len(held) // 100)]
    for r, w in sample:
        try:
            w.write(b"y")
            if await asyncio.wait_for(r.readexactly(1), 10) == b"y":
                alive += 1
        except Exception:
            pass
    print(f"still echoing: {alive} of {len(sample)} sampled", flush=True)


asyncio.run(main())
