#!/usr/bin/env python3
"""The production-shaped run's WeChat: HTTPS (a certificate of the bench's own CA), HTTP/1.1
keep-alive, every answer sent DELAY seconds after its request (WeChat is tens of ms away).

Usage: slow_upstream.py PORT CERT KEY DELAY_S STATS_FILE
Every 100 ms STATS_FILE gets "<TLS connections accepted> <requests answered>", so the bench
can count the handshakes the proxies cost per call.
"""
import asyncio
import ssl
import sys

PORT, CERT, KEY, DELAY, STATS = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
BODY = b'{"errcode":0,"errmsg":"ok"}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\nConnection: keep-alive\r\n\r\n"
    + BODY
)
accepted = 0
answered = 0


class Conn(asyncio.Protocol):
    def connection_made(self, transport):
        global accepted
        accepted += 1
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        # Requests without bodies (GET), as the bench sends them.
        self.buf += data
        loop = asyncio.get_running_loop()
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.buf = self.buf[end + 4 :]
            loop.call_later(DELAY, self.answer)

    def answer(self):
        global answered
        if not self.t.is_closing():
            answered += 1
            self.t.write(ANSWER)


async def stats():
    while True:
        with open(STATS + ".tmp", "w") as f:
            f.write(f"{accepted} {answered}\n")
        import os

        os.replace(STATS + ".tmp", STATS)
        await asyncio.sleep(0.1)


async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", PORT, ssl=ctx, backlog=4096, reuse_address=True)
    asyncio.create_task(stats())
    async with server:
        await server.serve_forever()


asyncio.run(main())
