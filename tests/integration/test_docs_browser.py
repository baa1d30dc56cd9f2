"""The docs pages in a real headless Chromium, with every request off the service blocked."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Route

from tests.integration.conftest import Server

pytestmark = pytest.mark.browser


def open_offline(browser: Browser, server: Server, path: str) -> tuple[object, list[str]]:
    page = browser.new_page()
    blocked: list[str] = []

    def only_the_service(route: Route) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_service)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}{path}", wait_until="networkidle")
    return page, blocked + errors


def test_swagger_ui_renders_operations_offline(browser: Browser, server: Server) -> None:
    page, problems = open_offline(browser, server, "/docs")
    page.wait_for_selector(".opblock", timeout=20_000)  # type: ignore[attr-defined]
    summaries = page.locator(".opblock-summary-path").all_inner_texts()  # type: ignore[attr-defined]
    assert "/v1/detect" in [s.replace("\u200b", "") for s in summaries]
    assert len(summaries) >= 6
    # Expand detect: the JSON example is shown.
    page.locator(".opblock-post").first.click()  # type: ignore[attr-defined]
    page.wait_for_selector(".opblock-body .body-param__example, .opblock-body .microlight", timeout=10_000)  # type: ignore[attr-defined]
    assert problems == []


def test_redoc_renders_offline(browser: Browser, server: Server) -> None:
    page, problems = open_offline(browser, server, "/redoc")
    heading = page.locator("h2", has_text="Detect events with the default model")  # type: ignore[attr-defined]
    heading.wait_for(timeout=20_000)
    assert page.locator("h2").count() >= 6  # type: ignore[attr-defined]
    assert problems == []
