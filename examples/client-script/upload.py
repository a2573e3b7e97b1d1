"""Upload files with tusd_py.client, printing progress every 10 %.

    python examples/client-script/upload.py https://uploads.example.com/files/ FILE...

Run it again after an interruption: each file resumes where the server stopped. The last
line for each file is its upload's URL.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tusd_py.client import TusClient, UploadFailed, UploadOptions


def upload(client: TusClient, endpoint: str, path: Path) -> str:
    told = -1

    def progress(done: int, total: int | None) -> None:
        nonlocal told
        tenth = 10 * done // total if total else 0
        if tenth > told:
            told = tenth
            print(f"{path.name}: {10 * tenth}% ({done} of {total} bytes)", flush=True)

    result = client.upload(
        path, endpoint, UploadOptions(metadata={"filename": path.name}), on_progress=progress
    )
    if result.resumed_from:
        print(f"{path.name}: resumed from byte {result.resumed_from}")
    return result.url


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    endpoint, files = argv[0], argv[1:]
    with TusClient() as client:
        for name in files:
            try:
                print(upload(client, endpoint, Path(name)))
            except UploadFailed as exc:
                print(f"{name}: failed: {exc}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
