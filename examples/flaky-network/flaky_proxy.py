"""A TCP proxy that behaves like a bad mobile network between a client and a server.

    python examples/flaky-network/flaky_proxy.py --upstream 1080 --listen 9080 \
        --cut-every 4MiB --stall-chance 0.01

- `rate`: bytes per second, client to server (all connections together), so that a test
  can catch an upload half way;
- `cut_every`: after about that many bytes client to server (each interval drawn between
  half and one and a half of it), the connection that carried the last byte is cut;
- `stall_chance`: before forwarding a read, the connection may stall for `stall_seconds`.

It runs in a thread with its own event loop (tests stay synchronous); `forwarded` counts the
bytes that went through, `cuts` the connections it cut. Random choices come from `seed`.
tests/ import it from here (tests/flaky_proxy.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import threading
import time


class FlakyProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        listen_port: int = 0,
        rate: float | None = None,
        cut_every: int | None = None,
        stall_chance: float = 0.0,
        stall_seconds: tuple[float, float] = (0.2, 1.0),
        seed: int = 0,
    ) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self.cut_every = cut_every
        self.stall_chance = stall_chance
        self.stall_seconds = stall_seconds
        self.random = random.Random(seed)
        self.port = listen_port
        self.forwarded = 0
        self.cuts = 0
        self._next_cut = self._draw_cut()
        self._sent_at = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _draw_cut(self) -> int | None:
        if self.cut_every is None:
            return None
        return self.forwarded + int(self.cut_every * self.random.uniform(0.5, 1.5))

    def __enter__(self) -> FlakyProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            self.port = sock.getsockname()[1]
            self._server = loop.run_until_complete(asyncio.start_server(self._serve, sock=sock))
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._server is not None:
            server, loop = self._server, self._loop

            async def stop() -> None:
                server.close()
                current = asyncio.current_task()
                pending = [task for task in asyncio.all_tasks() if task is not current]
                for task in pending:  # the connections still open: end them quietly
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                loop.stop()

            asyncio.run_coroutine_threadsafe(stop(), loop)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        cut = asyncio.Event()
        upstream = asyncio.create_task(self._pump(reader, up_writer, cut, uplink=True))
        downstream = asyncio.create_task(self._pump(up_reader, writer, cut, uplink=False))
        await cut.wait()
        for task in (upstream, downstream):
            task.cancel()
        for end in (writer, up_writer):
            with contextlib.suppress(Exception):
                end.transport.abort()

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        cut: asyncio.Event,
        uplink: bool,
    ) -> None:
        try:
            while True:
                data = await source.read(64 * 1024)
                if not data:
                    break
                if uplink:
                    data = await self._throttle(data)
                    if data is None:
                        break  # cut here
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            cut.set()

    async def _throttle(self, data: bytes) -> bytes | None:
        if self.stall_chance and self.random.random() < self.stall_chance:
            await asyncio.sleep(self.random.uniform(*self.stall_seconds))
        if self.rate:
            # all connections share the line: each read waits for its turn at `rate`
            self._sent_at = max(self._sent_at, time.monotonic()) + len(data) / self.rate
            await asyncio.sleep(max(0.0, self._sent_at - time.monotonic()))
        self.forwarded += len(data)
        if self._next_cut is not None and self.forwarded >= self._next_cut:
            self.cuts += 1
            self._next_cut = self._draw_cut()
            return None
        return data


def _size(text: str) -> int:
    units = {"": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3}
    number = text.rstrip("KkMmGgIiBb")
    return int(float(number) * units[text[len(number) :].lower()])


def main() -> None:
    parser = argparse.ArgumentParser(description="A TCP proxy that acts like a bad network.")
    parser.add_argument("--upstream", type=int, required=True, help="the server's port")
    parser.add_argument("--listen", type=int, required=True, help="the proxy's port")
    parser.add_argument("--rate", type=_size, help="bytes per second upstream (e.g. 2MiB)")
    parser.add_argument("--cut-every", type=_size, help="cut a connection every ~N bytes")
    parser.add_argument("--stall-chance", type=float, default=0.0, help="per 64 KiB read")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    proxy = FlakyProxy(
        args.upstream,
        listen_port=args.listen,
        rate=args.rate,
        cut_every=args.cut_every,
        stall_chance=args.stall_chance,
        seed=args.seed,
    )
    with proxy:
        print(f"proxying 127.0.0.1:{args.listen} -> 127.0.0.1:{args.upstream}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print(f"forwarded {proxy.forwarded} bytes, cut {proxy.cuts} connections")


if __name__ == "__main__":
    main()
