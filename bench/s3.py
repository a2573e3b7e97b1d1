"""Side-by-side S3 benchmark: tusd-py's S3 store against @tus/server + @tus/s3-store.

Both servers write to the same throw-away Ceph RADOS Gateway (one node, OSD in RAM; see
tests/s3_servers.py), each to its own bucket. Each round runs every server once, in
alternation, so that noise from a shared machine falls on all of them alike.

    uv run python bench/s3.py --size-mib 1024 --rounds 3

Needs node and `npm ci` in bench/peers, and Ceph (apt-get install ceph-mon ceph-osd radosgw).

1. Throughput: one upload of --size-mib created with POST, then sent as one curl PATCH.
   Per upload: seconds, MB/s, the server's peak RSS and RSS growth, the CPU seconds of the
   server and of the gateway (radosgw + ceph-osd). Each object's size is checked in its
   bucket afterwards; in the first round tusd-py's upload is also read back with GET and
   compared by SHA-256. Objects are deleted and the gateway's garbage collector run after
   each upload, so the in-memory OSD does not fill up. Before the first round the same
   amount goes through the gateway once, unmeasured (see `warm_up`).
2. S3 requests: a TamperProxy between each server and the gateway counts what the server
   sends while 64 MiB arrive as 64 sequential 1 MiB PATCHes, and as one 64 MiB PATCH
   (counted from the creating POST to the end of the last PATCH).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.run import PeakSampler, Server, curl_patch
from tests.s3_proxy import TamperProxy
from tests.s3_servers import RgwServer, S3Endpoint, free_port, start_rgw
from tusd_storage import s3api
from tusd_storage.s3 import md5_base64

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class S3Server(Server):
    """A tus server writing to a bucket of the gateway; knows where an upload's object is."""

    def __init__(
        self,
        name: str,
        command: Callable[[S3Endpoint], list[str]],
        port: int,
        data: Path,
        env: dict[str, str],
        bucket: str,
        prefix: str = "",
    ) -> None:
        super().__init__(name, [], port, data, env)
        self.make_command = command
        self.bucket, self.prefix = bucket, prefix

    def start_on(self, s3: S3Endpoint) -> None:
        self.command = self.make_command(s3)
        client = s3.client()
        if not client.bucket_exists(self.bucket):
            client.make_bucket(self.bucket)
        self.start()

    def object_key(self, url: str) -> str:
        return self.prefix + url.rstrip("/").rsplit("/", 1)[1]


def tusd_py(
    port: int,
    base: Path,
    s3: S3Endpoint,
    part_mib: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> S3Server:
    name = "tusd-py" if part_mib is None else f"tusd-py {part_mib} MiB parts"
    bucket = "tusd-py" if part_mib is None else f"tusd-py-{part_mib}"
    data = base / bucket

    def command(endpoint: S3Endpoint) -> list[str]:
        extra = [] if part_mib is None else ["--s3-part-size", str(part_mib * MiB)]
        return [
            sys.executable,
            "-m",
            "tusd_py",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--storage",
            f"s3://{bucket}/bench",
            "--s3-endpoint",
            endpoint.url,
            "--s3-create-bucket",
            "--log-level",
            "warning",
            *extra,
        ]

    env = {
        "TUSD_S3_ACCESS_KEY": s3.access_key,
        "TUSD_S3_SECRET_KEY": s3.secret_key,
        **(extra_env or {}),
    }
    return S3Server(name, command, port, data, env, bucket, prefix="bench/")


def tus_node(port: int, base: Path, s3: S3Endpoint) -> S3Server:
    data = base / "tus-node"

    def command(endpoint: S3Endpoint) -> list[str]:
        script = HERE / "peers" / "tus-node-s3-server.mjs"
        return ["node", str(script), str(port), "tus-node", endpoint.url]

    env = {
        "S3_ACCESS_KEY": s3.access_key,
        "S3_SECRET_KEY": s3.secret_key,
        "S3_REGION": s3.region,
        # @tus/s3-store spools every part to a file in os.tmpdir(): keep those on tmpfs too
        "TMPDIR": str(data),
        "NODE_NO_WARNINGS": "1",
    }
    return S3Server("@tus/server", command, port, data, env, "tus-node")


def rgw_pids(rgw: RgwServer) -> list[int]:
    return [rgw.processes[name].pid for name in ("client.rgw.a", "osd.0")]


def empty_buckets(rgw: RgwServer, buckets: list[str]) -> None:
    """Delete every object and run RGW's garbage collector, which frees the multipart
    uploads' data (otherwise it stays in the OSD, in RAM, for hours)."""
    client = rgw.endpoint.client()
    for bucket in buckets:
        if not client.bucket_exists(bucket):
            continue
        for item in client.list_objects(bucket, recursive=True):
            if item.object_name:
                client.remove_object(bucket, item.object_name)
    subprocess.run(
        ["radosgw-admin", "-c", str(rgw.conf), "gc", "process", "--include-all"],
        check=True,
        capture_output=True,
        timeout=300,
    )


def warm_up(rgw: RgwServer, size: int, part: int = 8 * MiB) -> float:
    """Put `size` bytes through the gateway once (4 parts in flight), then delete them.

    A fresh cluster is slower on its first upload (the gateway creates its data pool, the
    in-memory OSD faults its pages in: ~1.5 times the gateway CPU on the first GiB), which
    would fall on whichever server goes first. Returns the seconds it took.
    """
    client = rgw.endpoint.client()
    client.make_bucket("warm-up")
    data = os.urandom(part)
    handle = s3api.create_multipart_upload(client, "warm-up", "warm-up", {})

    def send(number: int) -> s3api.CompletedPart:
        headers = {"Content-MD5": md5_base64(data)}
        etag = s3api.upload_part(client, "warm-up", "warm-up", handle, number, data, headers)
        return s3api.CompletedPart(number, etag)

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(send, range(1, max(size // part, 1) + 1)))
    s3api.complete_multipart_upload(client, "warm-up", "warm-up", handle, done)
    seconds = time.perf_counter() - started
    empty_buckets(rgw, ["warm-up"])
    return seconds


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def get_sha256(url: str) -> tuple[str, int, float]:
    """GET the upload back through the server: (SHA-256, bytes, seconds)."""
    digest, size = hashlib.sha256(), 0
    started = time.perf_counter()
    with httpx.stream("GET", url, headers=TUS, timeout=300) as response:
        response.raise_for_status()
        for block in response.iter_bytes(MiB):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size, time.perf_counter() - started


def measure(
    server: S3Server, rgw: RgwServer, source: Path, check_sha256: str | None
) -> dict[str, float]:
    size = source.stat().st_size
    server.start_on(rgw.endpoint)
    try:
        assert server.process is not None
        pid = server.process.pid
        url = server.create(size)
        gateway = rgw_pids(rgw)
        cpu_before = cpu_seconds(pid), sum(cpu_seconds(p) for p in gateway)
        load_before = os.getloadavg()[0]
        sampler = PeakSampler(pid)
        seconds = curl_patch(url, source, timeout=1800)
        base, peak = sampler.stop()
        cpu_server = cpu_seconds(pid) - cpu_before[0]
        cpu_gateway = sum(cpu_seconds(p) for p in gateway) - cpu_before[1]
        stat = rgw.endpoint.client().stat_object(server.bucket, server.object_key(url))
        if stat.size != size:
            raise RuntimeError(f"{server.name}: object has {stat.size} bytes, expected {size}")
        result = {
            "seconds": seconds,
            "mb_per_s": size / seconds / 1e6,
            "rss_growth_mib": (peak - base) / 1024,
            "rss_peak_mib": peak / 1024,
            "cpu_server_s": cpu_server,
            "cpu_gateway_s": cpu_gateway,
            "load1": load_before,
        }
        if check_sha256 is not None:
            digest, got, get_seconds = get_sha256(url)
            if digest != check_sha256 or got != size:
                raise RuntimeError(f"{server.name}: GET gave other bytes ({got} bytes)")
            result["get_mb_per_s"] = size / get_seconds / 1e6
    finally:
        server.stop()
        empty_buckets(rgw, [server.bucket])
    return result


# --- S3 request counts -----------------------------------------------------------------


def patch(url: str, offset: int, body: bytes) -> int:
    response = httpx.patch(
        url,
        content=body,
        headers={
            **TUS,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
        },
        timeout=300,
    )
    if response.status_code != 204:
        raise RuntimeError(f"PATCH answered {response.status_code}: {response.text[:200]}")
    return int(response.headers["Upload-Offset"])


def count_requests(
    server: S3Server, rgw: RgwServer, total_mib: int, patch_mib: int
) -> tuple[Counter[str], float]:
    """S3 requests the server sent (by "METHOD kind") for one upload of `total_mib` sent in
    PATCHes of `patch_mib`, from its creation to the last PATCH's answer; and the seconds
    the PATCHes took (through the proxy: indicative only)."""
    data = os.urandom(total_mib * MiB)
    with TamperProxy(rgw.endpoint) as proxy:
        server.start_on(proxy.s3)
        try:
            proxy.reset_counts()  # not the server's start-up checks
            url = server.create(len(data))
            started = time.perf_counter()
            offset = 0
            step = patch_mib * MiB
            while offset < len(data):
                offset = patch(url, offset, data[offset : offset + step])
            seconds = time.perf_counter() - started
            counts = Counter({f"{method} {kind}": n for (method, kind), n in proxy.counts.items()})
            stat = rgw.endpoint.client().stat_object(server.bucket, server.object_key(url))
            if stat.size != len(data):
                raise RuntimeError(f"{server.name}: object has {stat.size} bytes")
        finally:
            server.stop()
            empty_buckets(rgw, [server.bucket])
    return counts, seconds


# --- main --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm/tusd-bench-s3"))
    parser.add_argument(
        "--extra-part-mib",
        type=int,
        default=16,
        help="also run tusd-py with this --s3-part-size in MiB (0: not)",
    )
    parser.add_argument(
        "--tusd-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for tusd-py (e.g. MALLOC_MMAP_THRESHOLD_=1048576); repeatable",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-counts", action="store_true")
    args = parser.parse_args()
    tusd_env = dict(item.split("=", 1) for item in args.tusd_env)
    args.dir.mkdir(parents=True, exist_ok=True)
    source = args.dir / f"source-{args.size_mib}.bin"
    if not source.exists() or source.stat().st_size != args.size_mib * MiB:
        with open(source, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(MiB))

    rgw = start_rgw(args.dir / "rgw", free_port())
    try:
        s3 = rgw.endpoint
        servers = [tusd_py(18191, args.dir, s3, None, tusd_env), tus_node(18192, args.dir, s3)]
        if args.extra_part_mib:
            servers.append(tusd_py(18193, args.dir, s3, args.extra_part_mib, tusd_env))
        print(f"RGW on {s3.url}; load average {os.getloadavg()}", flush=True)
        seconds = warm_up(rgw, args.size_mib * MiB)
        print(f"warm-up: {args.size_mib} MiB in {seconds:.1f} s", flush=True)

        results: dict[str, list[dict[str, float]]] = {}
        if not args.skip_throughput:
            digest = sha256_of(source)
            for round_ in range(args.rounds):
                for server in servers:
                    check = digest if round_ == 0 and server.name.startswith("tusd-py") else None
                    result = measure(server, rgw, source, check)
                    results.setdefault(server.name, []).append(result)
                    print(round_ + 1, server.name, json.dumps(result), flush=True)

        counted: dict[tuple[str, str], Counter[str]] = {}
        if not args.skip_counts:
            for label, patch_mib in (("64 x 1 MiB", 1), ("1 x 64 MiB", 64)):
                for server in servers[:2]:
                    counts, seconds = count_requests(server, rgw, 64, patch_mib)
                    counted[label, server.name] = counts
                    print(
                        label,
                        server.name,
                        f"{seconds:.2f} s",
                        json.dumps(dict(sorted(counts.items()))),
                        f"total {counts.total()}",
                        flush=True,
                    )
    finally:
        rgw.stop()

    print(f"\nload average at the end {os.getloadavg()}")
    if results:
        reference = statistics.median(r["mb_per_s"] for r in results["@tus/server"])
        for name, runs in results.items():
            speed = statistics.median(r["mb_per_s"] for r in runs)
            print(
                f"{name:24} median {speed:6.0f} MB/s "
                f"({statistics.median(r['seconds'] for r in runs):.2f} s) "
                f"ratio {speed / reference:.2f}  RSS growth "
                f"{min(r['rss_growth_mib'] for r in runs):.0f}-"
                f"{max(r['rss_growth_mib'] for r in runs):.0f} MiB, peak "
                f"{max(r['rss_peak_mib'] for r in runs):.0f} MiB  CPU server "
                f"{statistics.median(r['cpu_server_s'] for r in runs):.1f} s, gateway "
                f"{statistics.median(r['cpu_gateway_s'] for r in runs):.1f} s"
            )
    for (label, name), counts in counted.items():
        print(f"{label:11} {name:12} total {counts.total():4}  {dict(sorted(counts.items()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
