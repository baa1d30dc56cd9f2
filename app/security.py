"""API keys, CORS and security headers: pure ASGI middleware, plus the OpenAPI security scheme.

API keys: when any key is configured (``SHAPE_DETECTOR_API_KEYS`` and/or
``SHAPE_DETECTOR_API_KEYS_FILE``), every route needs ``Authorization: Bearer <key>`` or
``X-API-Key: <key>`` except the open ones: health probes, the docs, ``/`` and ``/static``, and
``/metrics`` unless ``SHAPE_DETECTOR_PROTECT_METRICS`` is set. Deny by default: a route added
later is protected unless it is listed here as open. Keys are compared as SHA-256 digests with
``hmac.compare_digest`` against every configured key (no early exit), so neither the time nor
the length of the comparison tells how much of a guess was right.

Security headers: ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` on
every response; on the docs pages also a Content-Security-Policy that allows only the page's
own inline scripts (by hash) and assets from this origin, and forbids framing; on the files
under /static the demo page's policy (no inline code, no framing).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import listed

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.settings import Settings

MIN_KEY_LENGTH = 16
MAX_CANDIDATES = 4  # key headers looked at per request; more are ignored
_KEY = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: no spaces, no control characters
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")

# Open whatever the keys: probes (kubelet and load balancers carry no key), docs, the demo page.
OPEN_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/docs", "/redoc", "/openapi.json"}
)
OPEN_PREFIXES = ("/static/",)
METRICS_PATH = "/metrics"
DOCS_PAGES = frozenset({"/docs", "/redoc"})
AUTH_HELP = "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


def load_api_keys(settings: Settings) -> tuple[str, ...]:
    """The configured keys, from the variable (commas) and the file (lines); raises ValueError.

    Messages say where a bad key is (its position), never the key itself. A keys file that is
    set but holds no key is an error: the file was meant to turn keys on.
    """
    found: list[tuple[str, str]] = []
    for i, raw in enumerate(settings.API_KEYS.get_secret_value().split(","), start=1):
        if raw.strip():
            found.append((f"API_KEYS: key {i}", raw.strip()))
    if settings.API_KEYS_FILE is not None:
        try:
            text = settings.API_KEYS_FILE.read_text(encoding="utf-8-sig")  # a BOM (Notepad) is no key's
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"API_KEYS_FILE: cannot read it ({type(exc).__name__})") from None
        in_file = len(found)
        for n, line in enumerate(text.splitlines(), start=1):
            key = line.strip()
            if key and not key.startswith("#"):
                found.append((f"API_KEYS_FILE: the key on line {n}", key))
        if len(found) == in_file:  # an empty Secret must not turn authentication off
            raise ValueError(
                f"API_KEYS_FILE: {str(settings.API_KEYS_FILE)!r} holds no key (only blank lines "
                "and # comments): put one key per line in it, or unset SHAPE_DETECTOR_API_KEYS_FILE "
                "to run without it"
            )
    for where, key in found:
        if not _KEY.match(key):
            raise ValueError(f"{where} has characters other than visible ASCII (no spaces)")
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(
                f"{where} is shorter than {MIN_KEY_LENGTH} characters; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
    return tuple(dict.fromkeys(key for _, key in found))


def parse_origins(text: str) -> list[str]:
    return [o.strip() for o in text.split(",") if o.strip()]


def check_origins(text: str) -> None:
    for origin in parse_origins(text):
        if origin != "*" and not _ORIGIN.match(origin):
            raise ValueError(
                f"CORS_ORIGINS: {origin!r} is not an origin: give scheme://host[:port] with no path "
                "or trailing slash (e.g. https://app.example.com), or *"
            )


def needs_key(path: str, *, protect_metrics: bool) -> bool:
    """Whether a request path (or an OpenAPI path template) needs a key when keys are set. An
    open path with trailing slashes is open too: the router redirects ``/docs/`` to ``/docs``."""
    bare = path.rstrip("/") or "/"
    if bare in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return False
    if bare == METRICS_PATH:
        return protect_metrics
    return True


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class ApiKeys:
    """The configured keys, as digests; ``matches`` compares in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k.encode("ascii")) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def matches(self, candidate: bytes) -> bool:
        given = _digest(candidate)
        ok = False
        for digest in self._digests:  # every key, always: no early exit
            ok |= hmac.compare_digest(given, digest)
        return ok

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """None if the headers carry a valid key, else why not (safe to show the client: it
        names the header at fault, never what it holds, which may be a key)."""
        candidates: list[bytes] = []
        unusable = "an API key is required"  # no key header at all
        for name, value in headers:
            if name == b"x-api-key":
                if value.strip():
                    candidates.append(value.strip())
                else:
                    unusable = "the X-API-Key header is empty"
            elif name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() == b"bearer" and token.strip():
                    candidates.append(token.strip())
                else:  # another scheme (Basic), no scheme, or no key after it
                    unusable = "the Authorization header is not 'Bearer <key>'"
        if not candidates:
            return f"{unusable}: {AUTH_HELP}"
        valid = False
        for candidate in candidates[:MAX_CANDIDATES]:
            valid |= self.matches(candidate)
        return None if valid else f"the API key is not valid: {AUTH_HELP}"


def json_response(status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> list[Message]:
    payload = orjson.dumps(body)
    return [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        },
        {"type": "http.response.body", "body": payload},
    ]


def is_oip_path(path: str) -> bool:
    """A path under /v2, the Open Inference Protocol's, whose errors are ``{"error": ...}``."""
    return path == "/v2" or path.startswith("/v2/")


def error_body(path: str, message: str) -> dict[str, Any]:
    """``{"error": ...}`` on the Open Inference Protocol's /v2 routes, ``{"detail": ...}`` elsewhere."""
    return {"error": message} if is_oip_path(path) else {"detail": message}


class ApiKeyMiddleware:
    """401 with ``WWW-Authenticate: Bearer`` for a protected path without a valid key.

    Runs before routing and before the body is read: a request without a key costs nothing.
    Installed only when keys are set (``create_app``): without keys there is no check at all.
    """

    def __init__(self, app: ASGIApp, keys: ApiKeys, protect_metrics: bool) -> None:
        if not keys.enabled:
            raise ValueError("ApiKeyMiddleware needs at least one key: install it only when keys are set")
        self.app = app
        self.keys = keys
        self.protect_metrics = protect_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not needs_key(scope["path"], protect_metrics=self.protect_metrics):
            await self.app(scope, receive, send)
            return
        problem = self.keys.check(scope["headers"])
        if problem is None:
            await self.app(scope, receive, _private(send))
            return
        for message in json_response(
            401, error_body(scope["path"], problem), [(b"www-authenticate", b"Bearer")]
        ):
            await send(message)


def _private(send: Send) -> Send:
    """``send`` with ``Cache-Control: private`` on a response that sets no caching itself: an
    answer given for a key is not for a shared cache (one with its defaults may keep a GET's
    answer and give it to clients without a key)."""

    async def send_private(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(name.lower() == b"cache-control" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"cache-control", b"private")]}
        await send(message)

    return send_private


_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def docs_csp(html: bytes) -> str:
    """A CSP for a docs page: its inline scripts by hash, everything else from this origin.

    Swagger UI and ReDoc set inline styles from JavaScript ('unsafe-inline' for styles only),
    use data: images and fonts, and ReDoc runs its search in a blob: worker.
    """
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(m).digest()).decode()}'"
        for m in _INLINE_SCRIPT.findall(html)
    )
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' {hashes}".strip(),
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "worker-src 'self' blob:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


COMMON_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
# The demo page's policy (app/api/demo.py): scripts, styles, images and requests from this origin
# only, no framing. Every file under /static is sent with it too: the demo page is also
# /static/demo/index.html, and an HTML or SVG file opened there is a page like any other.
PAGE_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
STATIC_HEADERS = [
    *COMMON_HEADERS,
    (b"content-security-policy", PAGE_CSP.encode()),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeadersMiddleware:
    """nosniff and no-referrer everywhere; CSP and no framing on the docs pages and the files
    under /static (the demo page's own route, ``/``, sets them itself)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] not in DOCS_PAGES:
            added = STATIC_HEADERS if scope["path"].startswith(OPEN_PREFIXES) else COMMON_HEADERS

            async def add_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), *added]}
                await send(message)

            await self.app(scope, receive, add_headers)
            return
        # A docs page is a few hundred bytes of HTML: hold it, hash its inline scripts.
        start: Message | None = None
        body = bytearray()

        async def hold(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers += [
                *COMMON_HEADERS,
                (b"content-length", str(len(body)).encode()),
                (b"x-frame-options", b"DENY"),
                (b"content-security-policy", docs_csp(bytes(body)).encode()),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": bytes(body)})

        await self.app(scope, receive, hold)


def cors_options(origins: list[str]) -> dict[str, Any]:
    """``JsonCORSMiddleware`` arguments (Starlette's): the allow-list; headers the API reads and sends."""
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST"],
        "allow_headers": [
            "Authorization",
            "X-API-Key",
            "Content-Type",
            "X-Request-ID",
            "Inference-Header-Content-Length",
        ],
        "expose_headers": ["X-Request-ID", "Retry-After", "Inference-Header-Content-Length"],
        "allow_credentials": False,  # keys travel in headers, never in cookies
        "max_age": 600,
    }


CORS_ORIGINS_HELP = "add it to the server's SHAPE_DETECTOR_CORS_ORIGINS, comma-separated scheme://host[:port]"
_STARLETTE_REFUSAL = "Disallowed CORS "  # Starlette's text: this, then what it refused ("origin, method")


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, whose refusal of a preflight is the service's error: 400 as
    Starlette answers it (its decision, its CORS headers), but a JSON body in the path's error
    format that says what the preflight asked for that is not allowed and how to allow it
    (Starlette: plain text "Disallowed CORS origin, method"). An allowed preflight is Starlette's
    200 with its CORS headers and no body (Starlette: plain text "OK")."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 400:
            return PreflightRefused(response, self.refusal(request_headers, bytes(response.body).decode()))
        allowed = Response(status_code=response.status_code)  # Content-Length: 0, no Content-Type
        allowed.raw_headers = [*cors_headers(response), *allowed.raw_headers]
        return allowed

    def refusal(self, asked: Headers, starlette_text: str) -> str:
        """Each part Starlette refused (named in its text), with what was asked and what is allowed."""
        refused = (
            starlette_text.removeprefix(_STARLETTE_REFUSAL).split(", ")
            if starlette_text.startswith(_STARLETTE_REFUSAL)
            else []  # a later Starlette's text: given as it is
        )
        parts = []
        for part in refused:
            if part == "origin":
                origin = asked["origin"][:200]
                parts.append(f"origin {origin!r} may not call this API from a browser ({CORS_ORIGINS_HELP})")
            elif part == "method":
                method = asked["access-control-request-method"][:40]
                parts.append(
                    f"method {method!r} is not allowed (ask for one of {', '.join(self.allow_methods)})"
                )
            elif part == "headers":
                names = asked.get("access-control-request-headers", "").split(",")
                not_allowed = [
                    name.strip() for name in names if name.strip().lower() not in self.allow_headers
                ]
                allowed = self.preflight_headers.get("Access-Control-Allow-Headers", "")
                parts.append(f"request headers {listed(not_allowed)} are not allowed (send only {allowed})")
            elif part == "private-network":
                parts.append("private network access (Access-Control-Request-Private-Network) is not allowed")
            else:
                parts.append(f"{part} is not allowed")
        return f"CORS preflight refused: {'; '.join(parts) or starlette_text}"


async def _never_called(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("RefusalCors computes headers only: no request is served through it")


async def _ignored(message: Message) -> None:
    pass


class RefusalCors:
    """The CORS headers of an answer the server writes before the app runs (a request its HTTP
    parser refused, 400 or 431: app/server.py), as ``JsonCORSMiddleware`` adds them to the app's
    own answers, from the same allow-list: a page of an allowed origin can read that error, which
    a browser would otherwise show as an opaque network error."""

    def __init__(self, origins: list[str]) -> None:
        self._cors = JsonCORSMiddleware(_never_called, **cors_options(origins))

    def headers(self, request_headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """What Starlette's CORS middleware adds to the start of a response to a request with
        ``request_headers`` (lower-case names, as received; those read so far of a request
        refused before the end of its headers)."""
        start: Message = {"type": "http.response.start", "status": 400, "headers": []}
        # Starlette's ``send`` awaits nothing but ``_ignored``, which returns at once: the
        # coroutine ends at its first step, and ``start`` holds the headers it added.
        step = self._cors.send(start, _ignored, Headers(raw=request_headers))
        try:
            step.send(None)
        except StopIteration:
            return list(start["headers"])
        step.close()  # a later Starlette that waits for something: no CORS headers, as before
        return []


def cors_headers(preflight: Response) -> list[tuple[bytes, bytes]]:
    """The headers of Starlette's answer to a preflight but those of its text content."""
    return [
        (name, value)
        for name, value in preflight.raw_headers
        if name not in (b"content-type", b"content-length")
    ]


class PreflightRefused(Response):
    """A refused CORS preflight answered as the service's error: the status and CORS headers of
    Starlette's refusal, ``message`` as JSON in the error format of the path asked about
    (``error_body``), rendered when the answer is sent: ``preflight_response`` is given the
    request's headers alone, not its path."""

    def __init__(self, refused: Response, message: str) -> None:
        super().__init__(status_code=refused.status_code)
        self.message = message
        self.raw_headers = cors_headers(refused)  # those of the content come with the body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body(scope["path"], self.message)
        for part in json_response(self.status_code, body, self.raw_headers):
            await send(part)


SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
AUTH_DOC = (
    "\n\n**Authorisation.** This server requires an API key on the model and inference routes "
    "(health probes, the docs and, unless configured otherwise, /metrics are open). Click "
    "**Authorize**, enter your key under *bearerAuth* (or *apiKeyHeader*), and Swagger UI sends "
    "it with every request; from code, send `Authorization: Bearer <key>` or `X-API-Key: <key>`."
)


UNAUTHORIZED_DOC = "No API key, or not a valid one (WWW-Authenticate: Bearer)."
BODY_TIMEOUT_DOC = "The body did not arrive within SHAPE_DETECTOR_BODY_TIMEOUT_S."
DEADLINE_DOC = "No result within SHAPE_DETECTOR_REQUEST_TIMEOUT_S; retry later."


def _add_response(op: dict[str, Any], path: str, status: str, text: str) -> None:
    name = "error" if is_oip_path(path) else "detail"
    schema = {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}
    op["responses"].setdefault(
        status, {"description": text, "content": {"application/json": {"schema": schema}}}
    )


FASTAPIS_422 = "#/components/schemas/HTTPValidationError"


def _cannot_fail_validation(op: dict[str, Any]) -> bool:
    """FastAPI's own 422 on an operation with no body and only plain string path parameters:
    any request that reaches it is valid (a name it does not know is its own 404)."""
    plain = {"type", "title", "description"}
    documented = op["responses"].get("422", {}).get("content", {}).get("application/json", {})
    return (
        documented.get("schema", {}).get("$ref") == FASTAPIS_422
        and "requestBody" not in op
        and all(
            p.get("in") == "path" and p["schema"].get("type") == "string" and set(p["schema"]) <= plain
            for p in op.get("parameters", [])
        )
    )


def _drop_unused_validation_schemas(schema: dict[str, Any]) -> None:
    """FastAPI's 422 schemas (``HTTPValidationError`` refers to ``ValidationError``), once no
    operation documents them."""
    components = schema.get("components", {}).get("schemas", {})
    if "HTTPValidationError" in components and FASTAPIS_422.encode() not in orjson.dumps(schema):
        del components["HTTPValidationError"]
        if b'#/components/schemas/ValidationError"' not in orjson.dumps(schema):
            components.pop("ValidationError", None)


def install_openapi(app: FastAPI, *, keys_enabled: bool, protect_metrics: bool) -> None:
    """Document what the middleware adds: the security scheme and 401 on protected operations
    (when keys are set), and 408/504 on the operations that read a body. FastAPI documents 422
    (``{"detail": [...]}``) for every operation with parameters; it is dropped under /v2, whose
    Open Inference Protocol routes answer a bad request 400 with ``{"error": ...}``, and where
    no request can fail FastAPI's validation (``GET /v1/models/{name}``)."""
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        if keys_enabled:
            schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(SCHEMES)
            schema["info"]["description"] = schema["info"].get("description", "") + AUTH_DOC
        for path, item in schema.get("paths", {}).items():
            for method, op in item.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                if is_oip_path(path) or _cannot_fail_validation(op):
                    op["responses"].pop("422", None)
                if keys_enabled and needs_key(path, protect_metrics=protect_metrics):
                    op["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
                    _add_response(op, path, "401", UNAUTHORIZED_DOC)
                if method == "post" and "requestBody" in op:
                    _add_response(op, path, "408", BODY_TIMEOUT_DOC)
                    _add_response(op, path, "504", DEADLINE_DOC)
        _drop_unused_validation_schemas(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
