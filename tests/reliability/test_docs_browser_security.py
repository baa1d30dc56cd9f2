"""The docs pages under their Content-Security-Policy, and Swagger's Authorize button, in Chromium."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.integration.conftest import Server, start_server
from tests.reliability.conftest import KEY_A

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("docs-keys"), env={"SHAPE_DETECTOR_API_KEYS": KEY_A})
    yield server
    assert server.stop() == 0, server.log()


def open_page(chromium: Browser, server: Server, path: str) -> tuple[Page, list[str]]:
    """The page, and every page error or CSP violation it reports (the vendored pages load
    nothing from off the service, so there is none to expect)."""
    page = chromium.new_page()
    problems: list[str] = []

    def on_console(text: str) -> None:
        if "Content Security Policy" not in text:
            return
        problems.append(f"console: {text}")

    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("console", lambda m: on_console(m.text))
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "console.error('Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI));"
    )
    page.goto(f"{server.url}{path}", wait_until="networkidle")
    return page, problems


def test_swagger_ui_works_under_its_csp_and_authorizes(browser: Browser, keyed_server: Server) -> None:
    page, problems = open_page(browser, keyed_server, "/docs")
    page.wait_for_selector(".opblock", timeout=20_000)
    assert page.locator("button.authorize").count() == 1  # the security scheme is declared
    # Authorize with the key (bearerAuth), then call GET /v1/models from the page.
    page.locator("button.authorize").click()
    page.locator(".auth-container input").first.fill(KEY_A)
    page.locator(".auth-container button.authorize").first.click()
    page.locator("button.close-modal").click()
    op = page.locator("#operations-v1-list_models_v1_models_get")
    op.locator(".opblock-summary").click()
    op.locator("button.try-out__btn").click()
    op.locator("button.execute").click()
    status = op.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=20_000)
    assert status.inner_text().strip() == "200"
    assert problems == []


def test_redoc_works_under_its_csp(browser: Browser, keyed_server: Server) -> None:
    page, problems = open_page(browser, keyed_server, "/redoc")
    page.locator("h2", has_text="Detect events with the default model").wait_for(timeout=20_000)
    # The search box runs in a worker; the description says how to authorise.
    page.locator("input[placeholder='Search...']").fill("reload")
    page.wait_for_timeout(500)
    assert page.get_by_text("Authorize").count() >= 1
    assert problems == []


def test_api_calls_from_swagger_without_a_key_are_refused(browser: Browser, keyed_server: Server) -> None:
    page, _ = open_page(browser, keyed_server, "/docs")
    page.wait_for_selector(".opblock", timeout=20_000)
    op = page.locator("#operations-v1-list_models_v1_models_get")
    op.locator(".opblock-summary").click()
    op.locator("button.try-out__btn").click()
    op.locator("button.execute").click()
    status = op.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=20_000)
    assert status.inner_text().strip() == "401"
