"""`serve --demo`: a browser upload page at `/` (Uppy's Dashboard with its tus plugin).

The page's script and styles are built from pinned npm packages by examples/browser-demo
and shipped in the `demo/` directory beside this module, so the page works offline and
neither the server nor its operators need npm. The page uploads to this server's own tus
endpoint, whose URL is written into the HTML when it is served (it depends on the base path
and on where the application is mounted).
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

#: the built page, script, styles and the licenses of what they bundle
DEMO_DIR = Path(__file__).with_name("demo")
#: URL path of the page's files; the page itself is at "/"
ASSET_PREFIX = "/demo/"
ASSET_TYPES = {
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
    "THIRD-PARTY-LICENSES.txt": "text/plain; charset=utf-8",
}
#: a versioned asset URL never changes its bytes: browsers may keep it for a year
IMMUTABLE = "public, max-age=31536000, immutable"
#: the page names the current asset versions, so browsers must ask again each time (a
#: conditional request: the unchanged page costs a 304)
REVALIDATE = "no-cache"
#: the page needs nothing from other origins: its script, styles and uploads are this
#: server's; Uppy shows thumbnails from blob: URLs and its icons are data: URLs
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data: blob:",
        "style-src 'self' 'unsafe-inline'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    #: a digest of the bytes: the `?v=` of the page's asset URLs and the entity tag
    version: str

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


def _load_assets(directory: Path) -> dict[str, Asset]:
    """Reads the shipped files once at start-up; a missing one is an installation error
    worth failing on rather than a page that half works."""
    assets: dict[str, Asset] = {}
    for name, media_type in ASSET_TYPES.items():
        path = directory / name
        if not path.is_file():
            raise RuntimeError(
                f"--demo: {path} is missing; rebuild it (examples/browser-demo/README.md)"
            )
        body = path.read_bytes()
        assets[name] = Asset(body, media_type, hashlib.sha256(body).hexdigest()[:16])
    return assets


def _etag_matches(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match")
    if wanted is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
    return "*" in tags or etag in tags


class DemoPage:
    def __init__(self, base_path: str, directory: Path = DEMO_DIR) -> None:
        self.base_path = base_path
        self.assets = _load_assets(directory)
        index = directory / "index.html"
        if not index.is_file():
            raise RuntimeError(f"--demo: {index} is missing")
        self.template = index.read_text(encoding="utf-8")

    def render(self, root_path: str) -> str:
        """The page for an application mounted at `root_path` ("" at the server's root)."""
        root = root_path.rstrip("/")
        values = {
            "%TUS_ENDPOINT%": root + self.base_path,
            "%DEMO_JS%": self._asset_url(root, "demo.js"),
            "%DEMO_CSS%": self._asset_url(root, "demo.css"),
        }
        page = self.template
        for placeholder, value in values.items():
            page = page.replace(placeholder, html.escape(value, quote=True))
        return page

    def _asset_url(self, root: str, name: str) -> str:
        return f"{root}{ASSET_PREFIX}{name}?v={self.assets[name].version}"

    async def page(self, request: Request) -> Response:
        return HTMLResponse(
            self.render(request.scope.get("root_path", "")),
            headers={
                "Cache-Control": REVALIDATE,
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def asset(self, request: Request) -> Response:
        asset = self.assets.get(request.path_params["name"])
        if asset is None:
            return PlainTextResponse("not found\n", status_code=404)
        # Only the URL the page names is immutable: an old or missing `v` gets today's bytes,
        # which must not stick in a cache under that URL.
        current = request.query_params.get("v") == asset.version
        headers = {
            "Cache-Control": IMMUTABLE if current else REVALIDATE,
            "ETag": asset.etag,
            "X-Content-Type-Options": "nosniff",
        }
        if _etag_matches(request, asset.etag):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)


def demo_routes(base_path: str) -> list[Route]:
    """The page at `/` and its files under ASSET_PREFIX (GET, and HEAD with it)."""
    demo = DemoPage(base_path)
    return [
        Route("/", demo.page, methods=["GET"]),
        Route(ASSET_PREFIX + "{name}", demo.asset, methods=["GET"]),
    ]
