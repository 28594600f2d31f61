#!/usr/bin/env python3
"""A TCP proxy for the download benchmark: forwards 127.0.0.1:LISTEN to 127.0.0.1:UPSTREAM,
closes the first connection after DROP_AT bytes from upstream, and writes one line per
connection ("<n> <bytes from upstream>") to LOG when it closes.

    dropproxy.py LISTEN UPSTREAM DROP_AT LOG
"""
import asyncio
import sys

LISTEN, UPSTREAM, DROP_AT, LOG = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
conn_no = 0


async def pipe(reader, writer, limit=None, counter=None):
    try:
        while True:
            data = await reader.read(1 << 20)
            if not data:
                break
            if limit is not None and counter[0] + len(data) >= limit:
                data = data[: limit - counter[0]]
                writer.write(data)
                counter[0] += len(data)
                await writer.drain()
                break
            writer.write(data)
            if counter is not None:
                counter[0] += len(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def handle(creader, cwriter):
    global conn_no
    conn_no += 1
    n = conn_no
    ureader, uwriter = await asyncio.open_connection("127.0.0.1", UPSTREAM)
    counter = [0]
    limit = DROP_AT if n == 1 else None
    up = asyncio.create_task(pipe(creader, uwriter))
    down = asyncio.create_task(pipe(ureader, cwriter, limit, counter))
    await down
    up.cancel()
    uwriter.close()
    with open(LOG, "a") as f:
        f.write(f"{n} {counter[0]}\n")


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    async with server:
        await server.serve_forever()


asyncio.run(main())
