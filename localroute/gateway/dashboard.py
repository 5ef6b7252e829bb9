"""The dashboard: one page and its stylesheet, script and icon, read from `localroute/gateway/static`.

Everything it needs is served from here: no CDN, no web fonts, no inline script or style, so the
Content-Security-Policy can forbid all of them. The page draws its charts from `/v1/localroute/stats`.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from localroute.errors import NotFoundError

# Same origin only; no inline script, no eval, no plugins, no framing, no form posts anywhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "endpoints.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
ASSETS = frozenset(name for name in _TYPES if name != "dashboard.html")


def _headers(etag: str) -> dict[str, str]:
    return {
        "content-security-policy": CSP,
        "cache-control": "no-cache",  # revalidate every load: an upgraded gateway shows its own page
        "etag": etag,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cross-origin-opener-policy": "same-origin",
    }


def _serve(request: Request, name: str) -> Response:
    # Files of a few KiB, read on demand: nothing is held at import or between requests.
    body = resources.files("localroute.gateway").joinpath("static", name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = _headers(etag)
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, headers=headers, media_type=_TYPES[name])


async def dashboard(request: Request) -> Response:
    """`GET /dashboard`: the page."""
    return _serve(request, "dashboard.html")


async def dashboard_asset(request: Request) -> Response:
    """`GET /dashboard/assets/{name}`: the page's stylesheet, script and icon; anything else is a 404."""
    name = request.path_params.get("name", "")
    if name not in ASSETS:
        raise NotFoundError(f"No such dashboard asset: {name[:100]}")
    return _serve(request, name)
