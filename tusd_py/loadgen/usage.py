"""CPU and memory of processes over a run, from /proc (Linux only).

`ProcessTreeSampler` watches a server: the process `pid` and all its descendants (a uvicorn
supervisor with `--workers N`, node with its helpers). Every `interval` it reads
/proc/<pid>/stat of each (utime, stime, rss) and keeps the peak of the summed RSS; every
`rescan` it looks for new descendants. CPU seconds are the growth of utime + stime over the
run, per process, summed: a process that appears during the run counts from zero, one that
exits counts up to its last sample. A peak shorter than `interval` can be missed.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_stat(pid: int) -> tuple[int, float, int]:
    """(parent pid, CPU seconds, RSS bytes) of a live process; OSError when it is gone."""
    raw = (PROC / str(pid) / "stat").read_bytes()
    # the command name, in parentheses, may contain spaces and parentheses itself
    fields = raw[raw.rindex(b")") + 2 :].split()
    ppid = int(fields[1])
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    rss = int(fields[21]) * PAGE_SIZE
    return ppid, cpu, rss


def descendants(root: int) -> set[int]:
    """`root` and every process below it (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = read_stat(int(entry.name))[0]
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found = {root}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


@dataclass(frozen=True)
class TreeUsage:
    pid: int
    #: processes seen in the tree during the run
    processes: int
    peak_rss_bytes: int
    cpu_seconds: float
    samples: int


class ProcessTreeSampler:
    def __init__(
        self, pid: int, interval: float = 0.05, rescan: float = 1.0, children: bool = True
    ) -> None:
        if not (PROC / str(pid) / "stat").exists():
            raise ValueError(f"no process {pid} (--pid reads /proc, so Linux only)")
        self.pid = pid
        self.interval = interval
        self.rescan = rescan
        self.children = children
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._peak = 0
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._members = self._scan()
        for pid in self._members:  # present at the start: count from here
            try:
                self._first[pid] = read_stat(pid)[1]
            except (OSError, ValueError, IndexError):
                pass

    def _scan(self) -> set[int]:
        return descendants(self.pid) if self.children else {self.pid}

    def start(self) -> ProcessTreeSampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        total = 0
        for pid in list(self._members):
            try:
                _, cpu, rss = read_stat(pid)
            except (OSError, ValueError, IndexError):
                self._members.discard(pid)
                continue
            self._first.setdefault(pid, 0.0)  # born during the run: all of its CPU counts
            self._last[pid] = cpu
            total += rss
        self._peak = max(self._peak, total)
        self._samples += 1

    def _run(self) -> None:
        next_scan = time.monotonic() + self.rescan
        while not self._stop.wait(self.interval):
            if self.children and time.monotonic() >= next_scan:
                self._members |= self._scan()
                next_scan = time.monotonic() + self.rescan
            self.sample()

    def stop(self) -> TreeUsage:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.children:
            self._members |= self._scan()
        self.sample()
        cpu = sum(last - self._first.get(pid, 0.0) for pid, last in self._last.items())
        return TreeUsage(self.pid, len(self._last), self._peak, round(cpu, 3), self._samples)


def own_cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used so far, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
