#!/usr/bin/env python3
"""Open N keep-alive HTTPS connections to a gateway, send one request on each,
and hold them open; print the gateway's RSS (from /proc) before and after.

    bench/idle_connections.py HOST:PORT PID [N] [PATH]

Loopback only. Used by bench/run.sh; needs `ulimit -n` above N.
"""
import asyncio
import ssl
import sys


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def open_one(host, port, ctx, path, sem):
    async with sem:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost")
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        return writer


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    pid = int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    path = sys.argv[4] if len(sys.argv) > 4 else "/public"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    before = rss_kb(pid)
    sem = asyncio.Semaphore(200)
    writers = await asyncio.gather(*(open_one(host, int(port), ctx, path, sem) for _ in range(n)))
    await asyncio.sleep(1)
    after = rss_kb(pid)
    print(f"idle keep-alive connections: {len(writers)}; gateway RSS {before / 1024:.1f} MB before, {after / 1024:.1f} MB with them open")
    for w in writers:
        w.close()


asyncio.run(main())
