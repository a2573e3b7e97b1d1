"""A webhook receiver for the hook and event tests: a real HTTP server on a free port."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Hookd:
    """A webhook receiver on a free port: records each call, answers what `answer` says."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.failures_left = 0
        #: the calls answered 2xx: (Hook-Name, event)
        self.taken: list[tuple[str, dict[str, Any]]] = []
        #: answer every call with 503 while set
        self.down = False
        hookd = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hookd.calls.append(
                    (
                        self.headers["Hook-Name"],
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                if hookd.failures_left > 0 or hookd.down:
                    hookd.failures_left = max(hookd.failures_left - 1, 0)
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                answer = hookd.answer(self.headers["Hook-Name"], body)
                hookd.taken.append((self.headers["Hook-Name"], body))
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, point: str) -> list[dict[str, Any]]:
        """The events taken (answered 2xx) at `point`, in order, with duplicates if any."""
        return [event for name, event in list(self.taken) if name == point]

    def answer(self, point: str, event: dict[str, Any]) -> dict[str, Any] | None:
        if point == "pre-access":
            token = event["request"]["headers"].get("authorization", "")
            return {"subject": token.removeprefix("Bearer ")} if token else None
        if point == "pre-create" and event["upload"]["length"] == 13:
            return {"reject": {"status": 413, "message": "Unlucky size."}}
        if point == "pre-create" and event["upload"]["length"] == 7:
            time.sleep(5)  # beyond --hooks-timeout
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
