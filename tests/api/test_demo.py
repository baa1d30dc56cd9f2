"""The demo page at /: served with security headers, no inline code, every asset local."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings, load_settings
from tests.api.conftest import wait_ready

DEMO_DIR = Path(__file__).resolve().parents[2] / "app" / "static" / "demo"
HOOKS = {"example", "run", "chart", "result"}


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.testids: set[str] = set()
        self.inline_scripts = 0
        self.styles = 0
        self.style_attrs: list[str] = []
        self.handlers: list[str] = []
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "formaction") and v]
        if a.get("data-testid"):
            self.testids.add(str(a["data-testid"]))
        if tag == "script" and not a.get("src"):
            self._in_script_without_src = True
        if tag == "style":
            self.styles += 1
        if "style" in a:
            self.style_attrs.append(tag)
        self.handlers += [k for k in a if k.startswith("on")]

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script_without_src = False


def header_values(r: object, name: str) -> list[str]:
    return [v.strip() for v in r.headers.get_list(name)]  # type: ignore[attr-defined]


def csp_directives(value: str) -> dict[str, list[str]]:
    out = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def test_demo_page_is_served_with_security_headers(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    (csp,) = header_values(r, "content-security-policy")
    d = csp_directives(csp)
    assert d["default-src"] == ["'self'"]
    for directive in ("script-src", "style-src", "connect-src", "img-src"):
        assert d[directive] == ["'self'"], (directive, d[directive])
    assert d["object-src"] == ["'none'"] and d["frame-ancestors"] == ["'none'"]
    assert "unsafe" not in csp
    assert header_values(r, "x-content-type-options") == ["nosniff"]  # once: the middleware's
    assert header_values(r, "referrer-policy") == ["no-referrer"]


def test_the_demo_page_under_static_and_every_static_file_have_its_policy(client: TestClient) -> None:
    """The page is also /static/demo/index.html: there it may not be framed (with its API key
    field, under another site's page) or run inline code either, nor may any file under /static."""
    page = client.get("/")
    for path in (
        "/static/demo/index.html",
        "/static/demo/favicon.svg",
        "/static/demo/demo.js",
        "/static/nope",
    ):
        r = client.get(path)
        assert header_values(r, "content-security-policy") == [page.headers["content-security-policy"]], path
        assert header_values(r, "x-frame-options") == ["DENY"], path
        assert header_values(r, "x-content-type-options") == ["nosniff"], path
    assert client.get("/static/demo/index.html").text == page.text


def test_demo_page_has_no_inline_code_and_loads_its_assets(client: TestClient) -> None:
    page = Page()
    page.feed(client.get("/").text)
    assert page.inline_scripts == 0 and page.styles == 0
    assert page.style_attrs == [] and page.handlers == []
    assert page.testids >= HOOKS
    assets = [u for u in page.urls if u.startswith("/static/")]
    others = [u for u in page.urls if u not in assets and not u.startswith("#")]
    assert others == ["/docs"], others  # everything else is a local asset or an anchor
    assert any(u.endswith(".js") for u in assets) and any(u.endswith(".css") for u in assets)
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for url in assets:
        r = client.get(url)
        assert r.status_code == 200, url
        assert r.headers["content-type"].startswith(types[Path(url).suffix]), (url, r.headers["content-type"])
        assert "nosniff" in r.headers.get("x-content-type-options", "nosniff")


def test_demo_script_uses_the_public_api_and_keeps_no_key() -> None:
    js = (DEMO_DIR / "demo.js").read_text(encoding="utf-8")
    assert "/v1/models" in js and "/v1/detect" in js and "return_scores" in js
    assert "Authorization" in js and "Bearer" in js
    for forbidden in ("localStorage", "sessionStorage", "document.cookie", "indexedDB", "eval(", "innerHTML"):
        assert forbidden not in js, forbidden
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", js)  # only the SVG namespace


def test_demo_page_is_not_in_the_api_schema(client: TestClient) -> None:
    assert "/" not in client.get("/openapi.json").json()["paths"]


@pytest.mark.skipif("API_KEYS" not in Settings.model_fields, reason="this build has no API keys")
def test_demo_page_and_assets_need_no_key(models_dir: Path) -> None:
    settings = load_settings(MODEL_DIR=models_dir, API_KEYS="k" * 32)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)  # /readyz is open: the model loader is done before the client closes
        assert c.get("/").status_code == 200
        assert c.get("/static/demo/demo.js").status_code == 200
        assert c.get("/static/demo/demo.css").status_code == 200
        assert c.get("/v1/models").status_code == 401  # the API itself still needs the key
