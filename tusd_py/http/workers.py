"""The supervisor of `serve --workers N`: uvicorn's, with a listening socket per worker.

uvicorn's supervisor binds one socket and every worker accepts from it. Under a burst of
new connections (a fleet of clients reconnecting, a load test) the worker that wakes first
accepts until the queue is empty, so one worker gets most of the connections and the others
idle: measured with 2 workers and 1,000 uploads starting at once, 314 MiB against 76 MiB
of memory, and little more throughput than one process. Here each worker gets a socket of
its own, all bound to the same address with SO_REUSEPORT, and the kernel spreads new
connections over them by their addresses: evenly, whoever is awake. The supervisor keeps
every socket open, so connections that arrive while a worker restarts wait in its queue.

Where SO_REUSEPORT does not spread connections (it exists on macOS and the BSDs, but
there the last socket bound gets them all) uvicorn's own supervisor runs unchanged.
"""

from __future__ import annotations

import logging
import socket
import sys

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger("uvicorn.error")


def spreads_connections() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_worker_sockets(config: Config, count: int) -> list[socket.socket]:
    """`count` listening sockets on config's host and port, bound with SO_REUSEPORT."""
    family = socket.AF_INET6 if config.host and ":" in config.host else socket.AF_INET
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((config.host, config.port))
            sock.listen(config.backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class SpreadWorkers(Multiprocess):
    """uvicorn's Multiprocess (signals, health checks, restarts), worker i on socket i."""

    def __init__(self, config: Config, worker_sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets=worker_sockets)
        self.worker_sockets = worker_sockets

    def _start_worker(self, slot: int) -> Process:
        process = Process(self.config, [self.worker_sockets[slot]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._start_worker(slot) for slot in range(len(self.worker_sockets))]

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for slot, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung, or gone already
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # its application cannot start: neither would a replacement
                log.error("Child process [%s] failed to start, stopping.", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            log.info("Child process [%s] died; starting another on its socket", process.pid)
            self.processes[slot] = self._start_worker(slot)

    def restart_all(self) -> None:
        """SIGHUP: each worker replaced by a new one on its socket, once the new one is up."""
        for slot, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._start_worker(slot)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                if not self.should_exit.is_set():
                    log.error("Child process [%s] was not ready in time; restart stopped.", new.pid)
                return
            old.terminate()
            old.join()
            self.processes[slot] = new


def run_workers(config: Config) -> None:
    """Run config.workers worker processes until a signal ends them (as uvicorn.run)."""
    if not spreads_connections():
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    sockets = bind_worker_sockets(config, config.workers)
    try:
        SpreadWorkers(config, sockets).run()
    finally:
        for sock in sockets:
            sock.close()
