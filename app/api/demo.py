"""The demo page at ``/``: pick a model, run a signal through the public /v1 API, see the result.

The page is static (``app/static/demo/``): its script and style are files, so the
Content-Security-Policy allows scripts, styles and requests from this origin only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from app.security import PAGE_CSP

router = APIRouter(include_in_schema=False)
DEMO_DIR = Path(__file__).resolve().parents[1] / "static" / "demo"
INDEX = DEMO_DIR / "index.html"

CSP = PAGE_CSP  # sent with every file under /static too: the page is also /static/demo/index.html
HEADERS = {  # beside nosniff and no-referrer, which SecurityHeadersMiddleware adds to every response
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@router.get("/", response_class=HTMLResponse)
def demo_page() -> HTMLResponse:
    """The demo page; everything it loads comes from /static/demo/ and the /v1 API."""
    return HTMLResponse(INDEX.read_text(encoding="utf-8"), headers=HEADERS)
