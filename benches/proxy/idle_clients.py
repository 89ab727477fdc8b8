#!/usr/bin/env python3
"""Opens N keep-alive client connections to HOST:PORT, makes one call (PATH) on each, then
holds them all idle until stdin closes. Prints "ready <N>" once every call was answered.

Usage: idle_clients.py HOST PORT PATH N
"""
import asyncio
import sys

HOST, PORT, PATH, N = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
REQUEST = f"GET {PATH} HTTP/1.1\r\nHost: {HOST}:{PORT}\r\n\r\n".encode()


async def one(sem, held):
    async with sem:
        r, w = await asyncio.open_connection(HOST, PORT)
        w.write(REQUEST)
        head = await r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"answer: {head[:40]!r}")
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
        await r.readexactly(length)
        held.append((r, w))


async def main():
    held = []
    sem = asyncio.Semaphore(500)
    await asyncio.wait_for(asyncio.gather(*(one(sem, held) for _ in range(N))), 120)
    print(f"ready {len(held)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    closed = sum(1 for r, _ in held if r.at_eof())
    print(f"closed while held: {closed}", flush=True)


asyncio.run(main())
