"""``python -m app``: serve the models with uvicorn, configured by SHAPE_DETECTOR_* variables."""

from __future__ import annotations

import math
import signal
import sys

import uvicorn

from app.lifecycle import CUT_OFF_GRACE_S
from app.observability import server_log_config
from app.server import IMPORT_PATH as HTTP_PROTOCOL
from app.settings import SettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"shape-detector: {exc}", file=sys.stderr)
        return 2
    # uvicorn shuts down gracefully on SIGTERM / SIGINT, then re-raises the signal to the
    # handler that was installed before it: make that a no-op so a clean stop exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    uvicorn.run(
        "app.main:app_from_env",
        factory=True,
        host=settings.HOST,
        port=settings.PORT,
        workers=settings.WORKERS,
        http=HTTP_PROTOCOL,  # uvicorn's httptools protocol, one write per response (app/server.py)
        # No WebSocket routes: a handshake is served as the HTTP request it also is (its route's
        # key check, headers and log line), not refused by uvicorn's WebSocket layer (when a
        # WebSocket library happens to be installed) past the app's middleware.
        ws="none",
        access_log=False,  # the app logs one structured line per request itself
        server_header=False,  # no "Server: uvicorn": the service does not advertise its software
        log_config=server_log_config(settings.LOG_LEVEL),  # uvicorn's own lines as JSON too
        log_level=settings.LOG_LEVEL,
        # The app drains first on SIGTERM and ends its requests itself by the shutdown timeout,
        # then stops uvicorn, forced after CUT_OFF_GRACE_S if they have not ended (app/lifecycle.py).
        # uvicorn's own timeout, which cancels what is left (a 500 and a traceback each), comes
        # after all that: a bound should the app's not act.
        timeout_graceful_shutdown=math.ceil(settings.SHUTDOWN_TIMEOUT_S + CUT_OFF_GRACE_S) + 1,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
