"""The docs pages in a real headless Chromium, with every request off the service blocked."""

from __future__ import annotations

from pathlib import Path

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
    errors: list[str] = []  # uncaught exceptions and console errors (CSP violations among them)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
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
    assert page.get_by_text("API docs by Redocly").count() == 1  # type: ignore[attr-defined]
    assert problems == []


@pytest.mark.parametrize("model", ["bump", "arrival"])
def test_training_report_opens_offline_and_fits_a_phone(browser: Browser, model: str) -> None:
    report = Path(__file__).resolve().parents[2] / "models" / model / "report.html"
    page = browser.new_page(viewport={"width": 375, "height": 800})
    problems: list[str] = []

    def only_the_file(route: Route) -> None:
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            problems.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_file)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(report.as_uri(), wait_until="load")
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.evaluate("[...document.images].filter(i => !i.alt).length") == 0
    # No horizontal scrolling of the page: wide tables scroll in their own box.
    sizes = page.evaluate("[document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]")
    assert sizes[0] <= sizes[1], sizes
    assert problems == []
