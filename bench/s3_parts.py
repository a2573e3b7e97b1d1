"""What the gateway takes without a tus server in front: UploadPart MB/s by concurrency.

Sends --size-mib to a fresh RGW (tests/s3_servers.py) as parts of --part-mib, from memory,
with 1, 2, 4, ... parts in flight, through tusd-py's own S3 calls (minio, Content-MD5, so
the same work per part as tusd-py's S3 store, hashing included). Shows whether a single
stream of parts, one in flight at a time, is bounded by the gateway's per-part latency.

    uv run python bench/s3_parts.py --size-mib 1024 --part-mib 8 --concurrency 1,2,4
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.s3 import cpu_seconds, empty_buckets, rgw_pids, warm_up
from tests.s3_servers import free_port, start_rgw
from tusd_storage import s3api
from tusd_storage.s3 import md5_base64

MiB = 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm/tusd-bench-s3-parts"))
    args = parser.parse_args()
    parts = [os.urandom(args.part_mib * MiB) for _ in range(4)]  # reused: bounded memory
    count = args.size_mib // args.part_mib
    rgw = start_rgw(args.dir / "rgw", free_port())
    try:
        warm_up(rgw, args.size_mib * MiB)
        client = rgw.endpoint.client()
        client.make_bucket("parts")
        for round_ in range(args.rounds):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                key = f"object-{round_}-{concurrency}"
                handle = s3api.create_multipart_upload(client, "parts", key, {})

                def send(number: int, key: str = key, handle: str = handle) -> s3api.CompletedPart:
                    data = parts[number % len(parts)]
                    headers = {"Content-MD5": md5_base64(data)}
                    etag = s3api.upload_part(client, "parts", key, handle, number, data, headers)
                    return s3api.CompletedPart(number, etag)

                gateway = rgw_pids(rgw)
                cpu = sum(cpu_seconds(p) for p in gateway)
                started = time.perf_counter()
                with ThreadPoolExecutor(concurrency) as pool:
                    done = list(pool.map(send, range(1, count + 1)))
                seconds = time.perf_counter() - started
                cpu = sum(cpu_seconds(p) for p in gateway) - cpu
                s3api.complete_multipart_upload(client, "parts", key, handle, done)
                print(
                    f"round {round_ + 1}: {args.part_mib} MiB parts, {concurrency} in flight: "
                    f"{count * args.part_mib * MiB / seconds / 1e6:.0f} MB/s "
                    f"({seconds:.2f} s, {seconds / count * 1000:.0f} ms of wall time a part; "
                    f"gateway CPU {cpu:.1f} s; load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
                empty_buckets(rgw, ["parts"])
    finally:
        rgw.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
