#!/usr/bin/env python3
"""Open N keep-alive HTTPS connections to a server, send one request on each,
and hold them open; print the server's RSS (from /proc, summed over the
comma-separated PIDs: a master and its workers) before and after, and the
memory per connection.

    bench/idle_connections.py HOST:PORT PID[,PID...] [N] [PATH]

Loopback only. Used by bench/run.sh; needs `ulimit -n` above N.
"""
import asyncio
import ssl
import sys


def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


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
    pids = [int(p) for p in sys.argv[2].split(",") if p]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    path = sys.argv[4] if len(sys.argv) > 4 else "/public"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    before = rss_kb(pids)
    sem = asyncio.Semaphore(200)
    writers = await asyncio.gather(*(open_one(host, int(port), ctx, path, sem) for _ in range(n)))
    await asyncio.sleep(1)
    after = rss_kb(pids)
    per = (after - before) / max(len(writers), 1)
    print(f"{len(writers)} idle keep-alive TLS connections: RSS {before / 1024:.1f} MB before, "
          f"{after / 1024:.1f} MB with them open, {per:.1f} KB per connection")
    for w in writers:
        w.close()


asyncio.run(main())
