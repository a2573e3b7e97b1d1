"""Side-by-side upload benchmark: tusd-py against @tus/server on the same machine.

Each round runs every server once, in alternation, so that noise from a shared machine
falls on all of them alike; we report medians and the ratio to @tus/server.

    uv run python bench/run.py --size-mib 1024 --rounds 3 --dir /dev/shm/tusd-bench

Needs node and `npm ci` in bench/peers. Measures, per server: one PATCH of the whole file
with curl (seconds, MB/s), one upload with tus-js-client, and the server's peak RSS growth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakSampler:
    """Samples a process's RSS every 20 ms (VmHWM would include start-up)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = rss_kib(pid)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.02)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return self.base, self.peak


class Server:
    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        data: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.command, self.port, self.data = name, command, port, data
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def start(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.mkdir(parents=True)
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **self.env} if self.env else None,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.options(self.endpoint, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.process.poll() is not None:
                break
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.process:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        shutil.rmtree(self.data, ignore_errors=True)

    def create(self, size: int) -> str:
        response = httpx.post(
            self.endpoint, headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size)}
        )
        response.raise_for_status()
        location = response.headers["Location"]
        return location if "://" in location else f"http://127.0.0.1:{self.port}{location}"


def curl_patch(url: str, source: Path, timeout: float | None = None) -> float:
    started = time.perf_counter()
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PATCH",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            "Upload-Offset: 0",
            "-H",
            "Content-Type: application/offset+octet-stream",
            "-T",
            str(source),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    elapsed = time.perf_counter() - started
    if out.stdout != "204":
        raise RuntimeError(f"PATCH answered {out.stdout}")
    return elapsed


def js_upload(endpoint: str, source: Path) -> float:
    out = subprocess.run(
        ["node", str(HERE / "peers" / "js-upload.mjs"), endpoint, str(source), "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def measure(server: Server, source: Path, client: str) -> dict[str, float]:
    server.start()
    try:
        assert server.process is not None
        sampler = PeakSampler(server.process.pid)
        if client == "curl":
            seconds = curl_patch(server.create(source.stat().st_size), source)
        else:
            seconds = js_upload(server.endpoint, source)
        base, peak = sampler.stop()
    finally:
        server.stop()
    size = source.stat().st_size
    return {
        "seconds": seconds,
        "mb_per_s": size / seconds / 1e6,
        "rss_growth_mib": (peak - base) / 1024,
        "rss_peak_mib": peak / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm/tusd-bench"))
    parser.add_argument("--clients", default="curl,tus-js-client")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    source = args.dir / f"source-{args.size_mib}.bin"
    if not source.exists() or source.stat().st_size != args.size_mib << 20:
        with open(source, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(1 << 20))
    servers = [
        Server(
            "tusd-py",
            [
                sys.executable,
                "-m",
                "tusd_py",
                "serve",
                "--port",
                "18181",
                "--data-dir",
                str(args.dir / "tusd-py"),
                "--log-level",
                "warning",
            ],
            18181,
            args.dir / "tusd-py",
        ),
        Server(
            "@tus/server",
            [
                "node",
                str(HERE / "peers" / "tus-node-server.mjs"),
                "18182",
                str(args.dir / "tus-node"),
            ],
            18182,
            args.dir / "tus-node",
        ),
    ]
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for client in args.clients.split(","):
        for _ in range(args.rounds):
            for server in servers:
                result = measure(server, source, client)
                results.setdefault(client, {}).setdefault(server.name, []).append(result)
                print(client, server.name, json.dumps(result), flush=True)
    print()
    for client, by_server in results.items():
        reference = statistics.median(r["mb_per_s"] for r in by_server["@tus/server"])
        for name, runs in by_server.items():
            speed = statistics.median(r["mb_per_s"] for r in runs)
            print(
                f"{client:14} {name:12} median {speed:7.0f} MB/s "
                f"({statistics.median(r['seconds'] for r in runs):.2f} s) "
                f"ratio {speed / reference:.2f}  peak RSS growth "
                f"{max(r['rss_growth_mib'] for r in runs):.0f} MiB "
                f"(peak {max(r['rss_peak_mib'] for r in runs):.0f} MiB)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
