"""The demo page at / in a real headless Chromium, with every request off the service blocked."""

from __future__ import annotations

import itertools
import json
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from app.settings import Settings
from tests.integration.conftest import Server, start_server
from training.scenario import bump

pytestmark = pytest.mark.browser
TOLERANCE = 5  # samples: a peak "at" an event
RESULT = re.compile(r"Probability (0|1)\.\d{3}: (event detected|no event detected) \(threshold [0-9.]+\)")
# Chromium logs every HTTP error answer of fetch() as a console error; the tests that provoke
# one allow exactly that line and nothing else.
HTTP_ERROR_LOG = re.compile(r"^Failed to load resource: the server responded with a status of (\d{3})")


@dataclass
class Demo:
    page: Page
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions

    def problems(self, allow_http: tuple[int, ...] = ()) -> list[str]:
        allowed = [e for e in self.errors if (m := HTTP_ERROR_LOG.match(e)) and int(m.group(1)) in allow_http]
        return self.blocked + [e for e in self.errors if e not in allowed]

    def example_and_run(self) -> list[int]:
        """Click the example button, then run; return the example's true events."""
        page = self.page
        page.get_by_test_id("example").click()
        events = true_events(page)
        assert events, "the example has no events in the DOM"
        page.get_by_test_id("run").click()
        wait_for_result(page)
        return events

    def storage_is_empty(self) -> bool:
        return bool(
            self.page.evaluate(
                "localStorage.length === 0 && sessionStorage.length === 0 && document.cookie === ''"
            )
        )


def open_demo(
    browser: Browser, server: Server, path: str = "/", *, width: int = 1200, models: bool = True
) -> Demo:
    page = browser.new_page(viewport={"width": width, "height": 900})
    demo = Demo(page)

    def only_the_service(route: Route) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            demo.blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_service)
    page.on("console", lambda m: demo.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: demo.errors.append(f"uncaught: {e}"))
    page.goto(f"{server.url}{path}", wait_until="networkidle")
    if models:  # the model list came from GET /v1/models
        expect(page.locator("#model")).not_to_have_value("", timeout=10_000)
    return demo


def true_events(page: Page) -> list[int]:
    text = page.get_by_test_id("chart").get_attribute("data-true-events") or ""
    return [int(v) for v in text.split(",") if v]


def peaks(page: Page) -> list[tuple[int, float]]:
    markers = page.get_by_test_id("peak")
    return [
        (int(m.get_attribute("data-index") or -1), float(m.get_attribute("data-probability") or "nan"))
        for m in markers.all()
    ]


def wait_for_result(page: Page) -> str:
    # The page's CSP forbids eval, so no wait_for_function: expect() polls without it.
    expect(page.get_by_test_id("result")).to_have_text(re.compile(r"^Probability "), timeout=15_000)
    return page.get_by_test_id("result").inner_text()


def check_peaks_at_events(found: list[tuple[int, float]], events: list[int]) -> None:
    indices = [i for i, _ in found]
    for e in events:
        assert any(abs(i - e) <= TOLERANCE for i in indices), f"no peak near the event at {e}: {indices}"
    strays = [i for i in indices if all(abs(i - e) > TOLERANCE for e in events)]
    assert len(strays) <= 1, f"peaks far from every true event: {strays} (events {events})"


def primer_csv(path: Path, seed: int = 0) -> Path:
    """The primer's signal (events at 35 and 255, a spike at 150) as a one-column CSV with a header."""
    rng = np.random.default_rng(seed)
    t = np.arange(300, dtype=np.float64)
    x = rng.standard_normal(300)
    for c in (35, 255):
        s = t - c
        x += 4.0 * bump(s) * (np.abs(s) <= 20)
    x[150] += 12.0
    path.write_text("value\n" + "\n".join(f"{v:.5f}" for v in x) + "\n")
    return path


def run_finds_primer_events(page: Page) -> list[int]:
    """Run detection on the primer's signal (``primer_csv``) in the box: an event is detected, at
    its two events (35 and 255) among the peaks, whose indices are returned."""
    page.get_by_test_id("run").click()
    result = wait_for_result(page)
    assert "event detected" in result and "300 samples" in result
    indices = [i for i, _ in peaks(page)]
    assert any(abs(i - 35) <= 2 for i in indices) and any(abs(i - 255) <= 2 for i in indices), indices
    return indices


def test_example_run_draws_chart_peaks_and_result(browser: Browser, server: Server) -> None:
    demo = open_demo(browser, server, "/?seed=11")
    page = demo.page
    for _ in range(3):  # examples 11, 12, 13
        events = demo.example_and_run()
        chart = page.get_by_test_id("chart")
        assert chart.is_visible()
        box = chart.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 200
        assert page.locator("[data-testid=chart] polyline").count() == 2  # signal and score curve
        found = peaks(page)
        assert len(found) >= 1
        check_peaks_at_events(found, events)
        result = page.get_by_test_id("result").inner_text()
        assert RESULT.search(result), result
        assert "event detected" in result and "no event detected" not in result
        # Hover text: every marker carries its index and probability.
        first = page.get_by_test_id("peak").first
        title = first.locator("title").text_content() or ""
        assert f"sample {found[0][0]}" in title and f"probability {found[0][1]:.3f}" in title
        first.hover()
    assert demo.storage_is_empty()
    assert demo.problems() == []


def test_nan_in_pasted_values_shows_the_apis_message(browser: Browser, server: Server) -> None:
    demo = open_demo(browser, server)
    page = demo.page
    values = ", ".join(["0.5"] * 10 + ["NaN"] + ["0.25"] * 10)
    page.fill("#values", values)
    page.get_by_test_id("run").click()
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=10_000)
    # The same bytes straight to the API: the page shows the API's own message.
    raw = (
        '{"signals":[['
        + values.replace(" ", "")
        + ']],"return_scores":true,"threshold":'
        + (page.input_value("#threshold") + "}")
    )
    r = httpx.post(
        f"{server.url}/v1/models/bump/detect", content=raw, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "NaN" in detail
    text = error.inner_text()
    assert detail in text, text
    assert "HTTP 400" in text and "Value 11 (“NaN”)" in text
    assert page.get_by_test_id("peak").count() == 0
    assert demo.problems(allow_http=(400,)) == []

    # A word among the numbers: the API's 422 names it and its index.
    page.fill("#values", ", ".join(["1"] * 20 + ["abc"]))
    page.get_by_test_id("run").click()
    expect(error).to_contain_text("HTTP 422")
    assert "non-numeric value ('abc') at index 20" in error.inner_text()
    assert demo.problems(allow_http=(400, 422)) == []


def test_csv_upload(browser: Browser, server: Server, tmp_path: Path) -> None:
    demo = open_demo(browser, server)
    page = demo.page
    page.set_input_files("#file", primer_csv(tmp_path / "primer.csv"))
    expect(page.locator("#status")).to_contain_text("Loaded primer.csv")
    assert "300 values" in page.locator("#status").inner_text()
    assert "header line “value” skipped" in page.locator("#status").inner_text()
    indices = run_finds_primer_events(page)
    assert all(abs(i - 150) > 20 for i in indices), indices  # the spike is not an event
    assert true_events(page) == []  # a file has no known events
    assert demo.problems() == []


def test_keyboard_only(browser: Browser, server: Server) -> None:
    demo = open_demo(browser, server, "/?seed=5")
    page = demo.page
    # Every form control has a label.
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')]"
        ".filter(e => e.labels.length === 0).map(e => e.id)"
    )
    assert unlabelled == []
    focused: list[str] = []
    for _ in range(20):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.dataset.testid || document.activeElement.id"))
        if focused[-1] == "example":
            break
    assert focused[-1] == "example", focused
    # The controls come in reading order: model, threshold, key, values, file, then the buttons.
    order = [f for f in focused if f in ("model", "threshold", "api-key", "values", "file", "example")]
    assert order == ["model", "threshold", "api-key", "values", "file", "example"], focused
    page.keyboard.press("Enter")
    events = true_events(page)
    assert events
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.testid") == "run"
    page.keyboard.press("Enter")
    assert RESULT.search(wait_for_result(page))
    check_peaks_at_events(peaks(page), events)
    assert page.evaluate("document.activeElement.dataset.testid") == "run"  # focus stays put
    # Space works on the buttons too: a new example, run again.
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Space")
    assert true_events(page) != [] and page.get_by_test_id("peak").count() == 0
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    wait_for_result(page)
    assert page.get_by_test_id("peak").count() >= 1
    assert demo.problems() == []


def test_phone_width_has_no_horizontal_scroll(browser: Browser, server: Server) -> None:
    demo = open_demo(browser, server, "/?seed=21", width=375)
    page = demo.page

    def no_overflow() -> None:
        sizes = page.evaluate(
            "[document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]"
        )
        assert sizes[0] <= sizes[1], sizes

    no_overflow()
    demo.example_and_run()
    assert page.get_by_test_id("peak").count() >= 1
    box = page.get_by_test_id("chart").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    no_overflow()
    # A long error message wraps too.
    page.fill("#values", "1 " * 20 + "x" * 300)
    page.get_by_test_id("run").click()
    page.locator("#error").wait_for(state="visible")
    no_overflow()
    assert demo.problems(allow_http=(422,)) == []


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    if "API_KEYS" not in Settings.model_fields:
        pytest.skip("this build has no API keys (SHAPE_DETECTOR_API_KEYS)")
    key = secrets.token_urlsafe(24)
    s = start_server(tmp_path_factory.mktemp("keyed"), env={"SHAPE_DETECTOR_API_KEYS": key})
    yield s, key
    s.stop()


def test_with_api_keys(browser: Browser, keyed_server: tuple[Server, str]) -> None:
    server, key = keyed_server
    demo = open_demo(browser, server, "/?seed=3", models=False)  # the page and its assets are open
    page = demo.page
    expect(page.locator("#model-info")).to_contain_text("API key")
    authorizations: list[str | None] = []
    page.on(
        "request",
        lambda r: authorizations.append(r.headers.get("authorization")) if "/v1/" in r.url else None,
    )
    # Without a key: the API's 401 message.
    page.get_by_test_id("example").click()
    page.get_by_test_id("run").click()
    page.locator("#error").wait_for(state="visible")
    assert "API key is required" in page.locator("#error").inner_text()
    # With the key: the models load, detection runs, the key went as a Bearer token.
    page.fill("#api-key", key)
    page.locator("#api-key").press("Tab")  # change event: the model list reloads with the key
    expect(page.locator("#model")).not_to_have_value("", timeout=10_000)
    page.get_by_test_id("run").click()
    wait_for_result(page)
    assert page.get_by_test_id("peak").count() >= 1
    assert f"Bearer {key}" in authorizations and authorizations[0] is None
    # Kept in page memory only.
    assert demo.storage_is_empty()
    assert key not in page.content()
    assert demo.problems(allow_http=(401,)) == []


def test_an_error_clears_the_previous_result(browser: Browser, server: Server) -> None:
    demo = open_demo(browser, server, "/?seed=11")
    page = demo.page
    demo.example_and_run()
    assert page.get_by_test_id("peak").count() >= 1 and page.locator("#peaks").is_visible()
    # The next run is refused: no peaks, table or chart of the previous signal stay beside the error.
    page.fill("#values", ", ".join(["1"] * 20 + ["abc"]))
    page.get_by_test_id("run").click()
    expect(page.locator("#error")).to_contain_text("HTTP 422")
    assert page.get_by_test_id("result").inner_text() == "No result: see the error above."
    assert page.get_by_test_id("peak").count() == 0
    assert page.locator("#peaks").is_hidden()
    assert page.locator("#figure").is_hidden()
    # The same when the service cannot be reached.
    demo.example_and_run()
    page.route(f"{server.url}/v1/**", lambda route: route.abort())
    page.get_by_test_id("run").click()
    expect(page.locator("#error")).to_contain_text("Could not reach the service")
    assert page.get_by_test_id("peak").count() == 0
    assert page.locator("#peaks").is_hidden() and page.locator("#figure").is_hidden()
    failed = [e for e in demo.errors if e.startswith("Failed to load resource: net::ERR_FAILED")]
    assert demo.problems(allow_http=(422,)) == failed


def test_a_loaded_file_clears_the_previous_result(browser: Browser, server: Server, tmp_path: Path) -> None:
    demo = open_demo(browser, server, "/?seed=11")
    page = demo.page
    demo.example_and_run()
    page.set_input_files("#file", primer_csv(tmp_path / "primer.csv"))
    expect(page.locator("#status")).to_contain_text("Loaded primer.csv")
    assert page.get_by_test_id("result").inner_text() == "Not run yet for this signal."
    assert page.get_by_test_id("peak").count() == 0 and page.get_by_test_id("true-event").count() == 0
    assert page.locator("#peaks").is_hidden()
    page.get_by_test_id("run").click()
    assert "300 samples" in wait_for_result(page)
    assert page.get_by_test_id("peak").count() >= 1 and page.locator("#peaks").is_visible()
    assert demo.problems() == []


def test_an_empty_file_is_refused_and_clears_the_previous_result(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    """An empty file (or one of blank lines) was "Loaded …: 0 values": it says what to load
    instead. A file refused (a table too) leaves the values in the box, and no result of an
    earlier run beside its error."""
    demo = open_demo(browser, server, "/?seed=11")
    page = demo.page
    page.get_by_test_id("example").click()
    example = page.input_value("#values")
    load = "load a CSV or text file of the signal's values, one per line or all on one line."
    for name, text, error in (
        ("empty.csv", "", f"empty.csv is empty: {load}"),
        ("blank.txt", "\n \r\n\t\n", f"blank.txt holds no values: {load}"),
        ("two.csv", "1,2\n3,4\n5,6\n", "two.csv has 2 values on each of its 3 lines"),
    ):
        page.get_by_test_id("run").click()
        assert "600 samples" in wait_for_result(page)
        assert page.get_by_test_id("peak").count() >= 1
        (tmp_path / name).write_text(text)
        page.set_input_files("#file", tmp_path / name)
        expect(page.locator("#error")).to_contain_text(error)
        assert page.locator("#status").inner_text() == ""
        assert page.get_by_test_id("result").inner_text() == "No result: see the error above."
        assert page.get_by_test_id("peak").count() == 0 and page.locator("#peaks").is_hidden()
        assert page.locator("#figure").is_hidden()
        assert page.input_value("#values") == example
        assert page.input_value("#file") == ""  # the same file, once filled, can be chosen again
    assert demo.problems() == []


def test_a_million_row_csv_loads_and_runs_without_freezing(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    demo = open_demo(browser, server)
    page = demo.page
    rng = np.random.default_rng(7)
    x = rng.standard_normal(1_000_000)
    x[500_000 - 20 : 500_000 + 21] += 4.0 * bump(np.arange(-20, 21, dtype=np.float64))
    path = tmp_path / "big.csv"
    path.write_text("value\n" + "\n".join(f"{v:.4f}" for v in x) + "\n")
    page.set_input_files("#file", path)
    # One value per line in the text box laid out a million lines: about 20 s frozen, then
    # 12.5 s on every key press in the box and 9 s on a resize. The waits below leave a busy
    # machine room (14 s in all here with both CPUs taken by other work) and still fail those.
    expect(page.locator("#status")).to_contain_text("1000000 values", timeout=12_000)
    page.locator("#values").press("End")
    page.keyboard.type(" 0.5")
    expect(page.locator("#values-count")).to_have_text("1000001 values.", timeout=8_000)
    page.keyboard.press("Backspace")
    page.keyboard.press("Backspace")
    page.keyboard.press("Backspace")
    page.keyboard.press("Backspace")
    page.get_by_test_id("run").click()
    result = wait_for_result(page)
    assert "1000000 samples" in result
    assert any(abs(i - 500_000) <= TOLERANCE for i, _ in peaks(page))
    page.set_viewport_size({"width": 700, "height": 900})
    expect(page.locator("[data-testid=chart]")).to_have_attribute(
        "width", re.compile(r"^[1-6]\d\d$"), timeout=5_000
    )
    assert demo.problems() == []


def test_a_csv_of_several_columns_is_refused_not_interleaved(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    demo = open_demo(browser, server)
    page = demo.page
    path = tmp_path / "two.csv"
    path.write_text("t,value\n" + "\n".join(f"{i},{np.sin(i / 5):.4f}" for i in range(300)) + "\n")
    page.set_input_files("#file", path)
    # Not a 600-value signal alternating time and value: the page says what to do instead.
    error = page.locator("#error")
    expect(error).to_contain_text("two.csv has 2 values on each of its 300 lines")
    assert "one column" in error.inner_text()
    assert page.input_value("#values") == ""
    assert "Loaded" not in page.locator("#status").inner_text()
    # One column loads as before.
    page.set_input_files("#file", primer_csv(tmp_path / "primer.csv"))
    expect(page.locator("#status")).to_contain_text("Loaded primer.csv: 300 values")
    assert error.is_hidden()
    assert demo.problems() == []


def test_a_threshold_that_is_not_a_number_is_not_silently_replaced(browser: Browser, server: Server) -> None:
    demo = open_demo(browser, server, "/?seed=40")
    page = demo.page
    page.get_by_test_id("example").click()
    detects: list[str] = []
    page.on("request", lambda r: detects.append(r.url) if r.url.endswith("/detect") else None)
    for typed in ("1e", "-"):  # the field's value is then "", as if left empty
        page.locator("#threshold").fill("")
        page.locator("#threshold").press_sequentially(typed)
        page.get_by_test_id("run").click()
        expect(page.locator("#error")).to_contain_text("Threshold is not a number")
        assert page.get_by_test_id("result").inner_text() == "No result: see the error above."
    assert detects == []
    # Emptied, it is the model's own.
    listing = httpx.get(f"{server.url}/v1/models").json()
    own = next(m["threshold"] for m in listing["models"] if m["name"] == listing["default"])
    page.locator("#threshold").fill("")
    page.get_by_test_id("run").click()
    assert f"(threshold {own})" in wait_for_result(page)
    assert page.locator("#error").is_hidden()
    assert demo.problems() == []


def test_a_decimal_comma_in_the_threshold_is_a_decimal_point(browser: Browser, server: Server) -> None:
    """ "0,35" is 0.35 (Chromium's number field read it as 35, which the API refused): one number
    between 0 and 1 has no thousands to separate. More commas, or a comma beside a point, are
    not a number, refused as "1e" is."""
    demo = open_demo(browser, server, "/?seed=40")
    page = demo.page
    page.get_by_test_id("example").click()
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/detect") else None)
    for typed, read in (("0,35", "0.35"), (",25", "0.25"), (" 0,5 ", "0.5")):
        page.locator("#threshold").fill("")
        page.locator("#threshold").press_sequentially(typed)
        page.get_by_test_id("run").click()
        expect(page.get_by_test_id("result")).to_contain_text(f"(threshold {read})")
        assert f'"threshold":{read}' in sent[-1]
        assert page.locator("#error").is_hidden()
    count = len(sent)
    for typed in ("0,3,5", "0.3,5", "0,3e1", ",", "1e999"):
        page.locator("#threshold").fill("")
        page.locator("#threshold").press_sequentially(typed)
        page.get_by_test_id("run").click()
        expect(page.locator("#error")).to_contain_text("Threshold is not a number")
        assert page.get_by_test_id("result").inner_text() == "No result: see the error above."
    assert len(sent) == count
    assert demo.problems() == []


PASTE = """(text) => {
    const data = new DataTransfer();
    data.setData("text/plain", text);
    const paste = new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
    return document.querySelector("#values").dispatchEvent(paste);  // false: the page took it
}"""


def test_a_pasted_column_of_a_million_values_goes_in_on_one_line(browser: Browser, server: Server) -> None:
    """Pasted one per line, a million values made a text box of a million lines: about 20 s to
    lay out, and again at every key press. Many lines go in on one line; a few, as pasted."""
    demo = open_demo(browser, server)
    page = demo.page
    rng = np.random.default_rng(8)
    x = rng.standard_normal(1_000_000)
    x[300_000 - 20 : 300_000 + 21] += 4.0 * bump(np.arange(-20, 21, dtype=np.float64))
    assert page.evaluate(PASTE, "value\n" + "\n".join(f"{v:.4f}" for v in x)) is False
    expect(page.locator("#values-count")).to_have_text("1000000 values.", timeout=12_000)
    assert page.evaluate("document.querySelector('#values').value.includes('\\n')") is False
    expect(page.locator("#status")).to_contain_text(
        "Pasted 1000000 values on one line (header line “value” skipped)"
    )
    page.get_by_test_id("run").click()
    assert "1000000 samples" in wait_for_result(page)
    assert any(abs(i - 300_000) <= TOLERANCE for i, _ in peaks(page))
    # A table pasted is refused, as a loaded one; a few lines are left to the browser to paste.
    assert page.evaluate(PASTE, "\n".join(f"{i},{i / 7:.3f}" for i in range(2000))) is False
    expect(page.locator("#error")).to_contain_text("The pasted text has 2 values on each of its 2000 lines")
    assert page.evaluate(PASTE, "1\n2\n3") is True
    assert demo.problems() == []


def wait_until_held(page: Page, held: list[Route], count: int) -> None:
    """Until ``count`` requests are held by the test's route handler: Playwright calls it as it
    handles the page's events, which a wait lets it do (right after the click it may not have)."""
    for _ in range(500):
        if len(held) >= count:
            break
        page.wait_for_timeout(20)
    assert len(held) == count, f"{len(held)} requests held, not {count}"


def test_a_result_is_shown_only_beside_the_signal_it_ran_on(browser: Browser, server: Server) -> None:
    """A new example generated while a slow detection ran got that detection's chart, peaks and
    probability, of the earlier signal, drawn with the new example's true events: its "nearest
    true event" column measured the earlier signal's peaks against them. Now a detection that
    ends after the values changed is dropped, and Run takes the new values at once."""
    demo = open_demo(browser, server, "/?seed=11")
    page = demo.page
    held: list[Route] = []
    page.route("**/detect", lambda route: held.append(route))  # answered when the test lets it
    page.get_by_test_id("example").click()
    first = true_events(page)
    page.get_by_test_id("run").click()
    expect(page.locator("#status")).to_contain_text("Running detection on 600 values")
    page.get_by_test_id("example").click()  # example 12, while example 11's detection runs
    second = true_events(page)
    assert second != first
    wait_until_held(page, held, 1)
    with page.expect_response("**/detect"):
        held.pop().continue_()
    expect(page.locator("#status")).to_contain_text("Example 12:")
    assert page.get_by_test_id("result").inner_text() == "Not run yet for this signal."
    assert page.get_by_test_id("peak").count() == 0 and page.locator("#peaks").is_hidden()
    assert true_events(page) == second
    # Typing while it runs: the status says to run again.
    page.get_by_test_id("run").click()
    expect(page.locator("#status")).to_contain_text("Running detection on 600 values")
    page.locator("#values").press("End")
    page.keyboard.type(" 0.5")
    with page.expect_response("**/detect"):
        held.pop().continue_()
    expect(page.locator("#status")).to_have_text(
        "The values changed while detection ran: run detection again."
    )
    assert page.get_by_test_id("result").inner_text() == "Not run yet for this signal."
    assert page.get_by_test_id("peak").count() == 0
    # A run with another threshold is not refused while an earlier one is still out, and the
    # earlier one's answer, arriving last, does not replace it.
    page.get_by_test_id("run").click()
    expect(page.locator("#status")).to_contain_text("Running detection on 601 values")
    page.locator("#threshold").fill("0,9")
    page.get_by_test_id("run").click()
    wait_until_held(page, held, 2)
    with page.expect_response("**/detect"):
        held.pop().continue_()  # the second run's answer first
    assert "(threshold 0.9)" in wait_for_result(page)
    with page.expect_event("requestfinished"):
        held.pop().continue_()  # then the first run's, late
    page.evaluate("new Promise((done) => setTimeout(done))")  # the page has read that answer
    assert "(threshold 0.9)" in page.get_by_test_id("result").inner_text()
    assert true_events(page) == []  # typed values: no known events
    assert demo.problems() == []


def test_a_typed_threshold_stays_when_an_api_key_is_entered(
    browser: Browser, keyed_server: tuple[Server, str]
) -> None:
    """Entering the key reloads the model list, which put the card's threshold back in the field
    over the one typed: the run used the card's, not the user's."""
    server, key = keyed_server
    demo = open_demo(browser, server, "/?seed=3", models=False)
    page = demo.page
    expect(page.locator("#model-info")).to_contain_text("API key")
    page.get_by_test_id("example").click()
    page.locator("#threshold").fill("0,3")
    page.fill("#api-key", key)
    page.locator("#api-key").press("Tab")  # change event: the model list reloads with the key
    expect(page.locator("#model")).not_to_have_value("", timeout=10_000)
    expect(page.locator("#model-info")).to_contain_text("peaks at least")
    assert page.input_value("#threshold") == "0,3"
    page.get_by_test_id("run").click()
    assert "(threshold 0.3)" in wait_for_result(page)
    # A threshold left as the page put it follows the card: another model's, once chosen.
    page.locator("#threshold").fill("")
    page.locator("#api-key").fill(key + "x")
    page.locator("#api-key").press("Tab")
    expect(page.locator("#model-info")).to_contain_text("needs a valid API key")
    page.locator("#api-key").fill(key)
    page.locator("#api-key").press("Tab")
    cards = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
    own = {m["name"]: str(m["threshold"]) for m in cards["models"]}
    expect(page.locator("#threshold")).to_have_value(own[page.input_value("#model")])
    other = next(name for name in own if name != page.input_value("#model"))
    page.select_option("#model", other)
    assert page.input_value("#threshold") == own[other]
    assert demo.problems(allow_http=(401,)) == []


def test_a_binary_file_is_refused_saying_what_to_load(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    """A NumPy .npy file (which the API takes, but the page reads as text) was "Loaded sig.npy:
    32 values", its header bytes in the box, and the run's 422 spoke of a non-numeric value
    "\ufffdNUMPY...". A binary file is refused, saying what to load instead."""
    demo = open_demo(browser, server, "/?seed=11")
    page = demo.page
    page.get_by_test_id("example").click()
    example = page.input_value("#values")
    np.save(tmp_path / "sig.npy", np.random.default_rng(0).standard_normal(300).astype(np.float32))
    (tmp_path / "sheet.xlsx").write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(256)) * 4)
    load = "load a CSV or text file of the signal's values, one per line or all on one line"
    for name, error in (
        (
            "sig.npy",
            f"sig.npy is not a text file but a NumPy .npy file: {load} (numpy.savetxt writes one), or "
            "send the .npy file itself to the API (POST /v1/detect with Content-Type: application/x-npy",
        ),
        ("sheet.xlsx", f"sheet.xlsx is not a text file: {load}."),
    ):
        page.set_input_files("#file", tmp_path / name)
        expect(page.locator("#error")).to_contain_text(error)
        assert page.locator("#status").inner_text() == ""
        assert page.input_value("#values") == example
        assert page.get_by_test_id("result").inner_text() == "No result: see the error above."
        assert page.input_value("#file") == ""
    assert demo.problems() == []


def test_a_model_reloaded_while_the_page_is_open_runs_with_its_new_card(
    browser: Browser, tmp_path: Path
) -> None:
    """The page sent the card's threshold it had put in the field: after a hot reload whose card
    has another threshold, every run still used the old card's, and the model list kept the old
    version and threshold. The field left as the page filled it is the model's own (not sent),
    and an answer from a version the list does not show reloads the list."""
    models = tmp_path / "models"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "bump", models / "bump")
    server = start_server(tmp_path, env={"SHAPE_DETECTOR_MODEL_DIR": str(models)})
    try:
        demo = open_demo(browser, server, "/?seed=11")
        page = demo.page
        card = json.loads((models / "bump" / "card.json").read_text())
        expect(page.locator("#threshold")).to_have_value(str(card["threshold"]))
        page.get_by_test_id("example").click()
        page.get_by_test_id("run").click()
        assert f"(threshold {card['threshold']}). " in wait_for_result(page)
        card["version"] = "9.0.0"
        card["threshold"] = 0.9
        (models / "bump" / "card.json").write_text(json.dumps(card))
        assert httpx.post(f"{server.url}/admin/models/bump/reload").json()["version"] == "9.0.0"
        page.get_by_test_id("run").click()
        expect(page.get_by_test_id("result")).to_contain_text("(threshold 0.9). ")
        assert "Model bump 9.0.0" in page.get_by_test_id("result").inner_text()
        expect(page.locator("#model option")).to_have_text(["bump 9.0.0"])
        expect(page.locator("#threshold")).to_have_value("0.9")
        assert page.locator("#model-info").inner_text().startswith("Threshold 0.9, ")
        # A threshold typed is sent as typed.
        page.locator("#threshold").fill("0.25")
        page.get_by_test_id("run").click()
        expect(page.get_by_test_id("result")).to_contain_text("(threshold 0.25). ")
        assert demo.problems() == []
    finally:
        server.stop()


def test_the_value_count_is_what_a_run_sends(browser: Browser, server: Server) -> None:
    """The count under the box counted a header line's words as values ("4 values." for a
    header and three numbers, which ran as 3 samples)."""
    demo = open_demo(browser, server)
    page = demo.page
    count = page.locator("#values-count")
    for typed, shown in (
        ("value\n1\n2\n3", "3 values."),
        ("\r\n  time of day \r\n1\r\n2\r\n", "2 values."),
        ("1\n2\n3", "3 values."),
        ("value", "1 value."),  # a word alone is no header: it is sent, and refused
        ("1 2 3 value", "4 values."),
    ):
        page.fill("#values", typed)
        expect(count).to_have_text(shown)
    page.fill("#values", "value\n" + "\n".join(["0.25"] * 40))
    expect(count).to_have_text("40 values.")
    page.get_by_test_id("run").click()
    assert ", 40 samples." in wait_for_result(page)
    assert demo.problems() == []


def test_a_page_opened_while_the_default_model_loads_does_not_pick_another(
    browser: Browser, server: Server
) -> None:
    """A server takes requests while its models load, and lists those loaded so far. A page
    opened then chose the first model listed (arrival) in place of the default one, unseen,
    and kept that list. Now "default model" is chosen, the page says why, and reads the list
    again until the default model is in it."""
    listing = httpx.get(f"{server.url}/v1/models").json()
    assert listing["default"] == "bump"
    loading = {**listing, "models": [m for m in listing["models"] if m["name"] != "bump"]}
    assert loading["models"]
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    answered: list[str] = []

    def models(route: Route) -> None:
        if answered:
            answered.append("served")
            route.continue_()
        else:
            answered.append("loading")
            route.fulfill(json=loading)

    page.route("**/v1/models", models)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.goto(f"{server.url}/?seed=11", wait_until="domcontentloaded")
    info = page.locator("#model-info")
    expect(info).to_have_text(
        "The default model, bump, is not serving yet (loading, or it failed to load: /readyz says "
        "why). The list is read again in a few seconds."
    )
    assert page.input_value("#model") == ""
    assert page.locator("#model option").all_inner_texts()[0] == "default model"
    assert page.input_value("#threshold") == ""
    # Read again: the default model, now listed, is chosen, with its card's threshold.
    expect(page.locator("#model")).to_have_value("bump", timeout=10_000)
    bump_card = next(m for m in listing["models"] if m["name"] == "bump")
    assert page.input_value("#threshold") == str(bump_card["threshold"])
    expect(info).to_contain_text(f"Threshold {bump_card['threshold']}, ")
    assert "default model" not in page.locator("#model option").all_inner_texts()
    assert answered == ["loading", "served"]
    assert errors == []


def test_a_json_list_of_numbers_is_one_signal(browser: Browser, server: Server, tmp_path: Path) -> None:
    """A JSON array file ("[0.12, -0.5, ...]", as json.dump or numpy's tolist() writes it) was
    "Loaded: 300 values", then refused by the API for the non-numeric value "[0.12": its
    brackets are not part of its values. So for a Python list pasted into the box."""
    demo = open_demo(browser, server)
    page = demo.page
    x = np.loadtxt(primer_csv(tmp_path / "primer.csv"), skiprows=1)
    assert ".json" in (page.get_attribute("#file", "accept") or "").split(",")  # offered by the chooser
    for name, text in (
        ("compact.json", json.dumps(x.tolist())),
        ("pretty.json", json.dumps(x.tolist(), indent=2) + "\n"),
    ):
        (tmp_path / name).write_text(text)
        page.set_input_files("#file", tmp_path / name)
        expect(page.locator("#status")).to_have_text(f"Loaded {name}: 300 values. Now run detection.")
        assert "[" not in page.input_value("#values")
        run_finds_primer_events(page)
    page.fill("#values", "[" + " ".join(f"{v:.4f}" for v in x) + "]")  # numpy's print of an array
    page.get_by_test_id("run").click()
    assert "300 samples" in wait_for_result(page)
    assert page.locator("#error").is_hidden()
    assert demo.problems() == []


def test_a_column_with_decimal_commas_is_refused_saying_why(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    """A one-column CSV with decimal commas ("0,1257" on every line, as a spreadsheet in such a
    locale exports it) was refused as a table of two columns, telling the user to keep only
    the signal's column: it has only one. The refusal says to write decimal points."""
    demo = open_demo(browser, server)
    page = demo.page
    x = np.loadtxt(primer_csv(tmp_path / "primer.csv"), skiprows=1)
    path = tmp_path / "comma.csv"
    path.write_text("value\n" + "\n".join(f"{v:.4f}".replace(".", ",") for v in x) + "\n")
    page.set_input_files("#file", path)
    error = page.locator("#error")
    expect(error).to_contain_text("comma.csv has 2 values on each of its 300 lines")
    assert error.inner_text().endswith(
        "If each line is one number with a decimal comma (0,25), write it with a decimal point "
        "(0.25): here a comma separates values."
    )
    assert "Keep only the signal's column" not in error.inner_text()
    # A real table of two columns is told to keep one, as before.
    path.write_text("t,value\n" + "\n".join(f"{i},{v:.4f}" for i, v in enumerate(x)) + "\n")
    page.set_input_files("#file", path)
    expect(error).to_contain_text("Keep only the signal's column.")
    assert "decimal comma" not in error.inner_text()
    assert demo.problems() == []


def test_an_example_has_the_chosen_models_shape(browser: Browser, server: Server) -> None:
    """With arrival chosen, an example held bump's events, compared with the peaks of a model
    never trained to find them. An example's events are the chosen model's template (its card's),
    centred at its template_center, and that model finds them."""
    cards = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    demo = open_demo(browser, server, "/?seed=40")
    page = demo.page
    for name in ("arrival", "bump"):
        page.select_option("#model", name)
        events = demo.example_and_run()
        x = np.array([float(v) for v in page.input_value("#values").split(",")])
        template, center = np.array(cards[name]["template"]), cards[name]["template_center"]
        other = np.array(cards["bump" if name == "arrival" else "arrival"]["template"])
        for e in events:  # matched-filter SNR 7..11 for its own shape, in unit white noise
            own = x[e - center : e - center + len(template)] @ template / np.linalg.norm(template)
            assert 4 < own < 15, (name, e, own)
            best_other = max(
                abs(x[s : s + len(other)] @ other) / np.linalg.norm(other)
                for s in range(max(0, e - len(other)), min(len(x) - len(other), e + len(template)))
            )
            assert best_other < own, (name, e, own, best_other)
        check_peaks_at_events(peaks(page), events)
    assert demo.problems() == []


def test_tens_of_thousands_of_peaks_show_the_most_probable(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    """A threshold near 0 on a long signal finds a peak at most local maxima: every index went
    into the result line (138 KB of text on a million samples) and a row and a marker each into
    the table and the chart (seconds to build). The line lists the first 20, the table and the
    chart the 1000 most probable, and both say how many there are."""
    demo = open_demo(browser, server)
    page = demo.page
    x = np.random.default_rng(3).standard_normal(100_000)
    x[50_000 - 20 : 50_000 + 21] += 6.0 * bump(np.arange(-20, 21, dtype=np.float64))
    path = tmp_path / "noise.csv"
    path.write_text("\n".join(f"{v:.4f}" for v in x) + "\n")
    page.set_input_files("#file", path)
    expect(page.locator("#status")).to_contain_text("100000 values", timeout=12_000)
    page.select_option("#model", "bump")
    page.locator("#threshold").fill("0.000001")
    page.get_by_test_id("run").click()
    result = wait_for_result(page)
    answer = httpx.post(
        f"{server.url}/v1/models/bump/detect",
        json={"signals": [[round(v, 4) for v in x.tolist()]], "threshold": 0.000001},
        timeout=60,
    ).json()["results"][0]["peaks"]
    assert len(answer) > 1000
    listed = re.search(r"(\d+) peaks at ([\d, ]+) and (\d+) more\.", result)
    assert listed, result
    assert int(listed.group(1)) == len(answer) and int(listed.group(3)) == len(answer) - 20
    assert [int(i) for i in listed.group(2).split(", ")] == [p["index"] for p in answer[:20]]
    top = sorted(answer, key=lambda p: (-p["probability"], p["index"]))[:1000]
    expected = sorted(p["index"] for p in top)
    markers = page.get_by_test_id("peak").evaluate_all("els => els.map(e => Number(e.dataset.index))")
    assert markers == expected  # the chart's
    rows = page.locator("#peaks tbody tr")
    expect(rows).to_have_count(1000)
    assert [int(t) for t in rows.locator("td:first-child").all_inner_texts()] == expected
    expect(page.locator("#peaks caption")).to_have_text(
        f"Detected peaks: the 1000 most probable of {len(answer)}, by sample index "
        "(the API's answer holds them all)"
    )
    assert any(abs(i - 50_000) <= TOLERANCE for i in expected)  # the event is among them
    assert demo.problems() == []


def test_an_example_of_a_long_template_is_long_enough_to_hold_it(browser: Browser, server: Server) -> None:
    """A model of one's own may have a long shape: an example is six times the template's length
    when that is more than 600 samples, its events whole and apart."""
    listing = httpx.get(f"{server.url}/v1/models").json()
    s = np.arange(300, dtype=np.float64)
    template = (np.sin(2 * np.pi * s / 50) * np.exp(-s / 120)).round(6)
    long = {
        **listing,
        "models": [{**m, "template": template.tolist(), "template_center": 0} for m in listing["models"]],
    }
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.route("**/v1/models", lambda route: route.fulfill(json=long))
    page.goto(f"{server.url}/?seed=7", wait_until="networkidle")
    expect(page.locator("#model")).to_have_value("bump")
    page.get_by_test_id("example").click()
    events = true_events(page)
    x = np.array([float(v) for v in page.input_value("#values").split(",")])
    assert len(x) == 1800 and events
    assert all(e + len(template) <= len(x) for e in events)
    assert all(b - a >= len(template) for a, b in itertools.pairwise(events))
    norm = np.linalg.norm(template)
    for e in events:  # matched-filter SNR 7..11 for the long shape, in unit white noise
        assert 4 < x[e : e + len(template)] @ template / norm < 15


def test_a_v1_request_body_gives_its_one_signal(browser: Browser, server: Server, tmp_path: Path) -> None:
    """A /v1 request body ({"signals": [[0.12, ...]]}, what a user of the API has at hand) was
    refused by the API for the non-numeric value '{"signals":'. Its one signal is read, and the
    status line says so; several signals, or another JSON object, are refused saying why."""
    demo = open_demo(browser, server)
    page = demo.page
    x = np.loadtxt(primer_csv(tmp_path / "primer.csv"), skiprows=1)
    status = page.locator("#status")
    error = page.locator("#error")
    path = tmp_path / "body.json"
    path.write_text(json.dumps({"signals": [x.tolist()]}, indent=2) + "\n")
    page.set_input_files("#file", path)
    expect(status).to_have_text(
        "Loaded body.json: 300 values, the one signal of the /v1 request body's “signals”. Now run detection."
    )
    assert page.input_value("#values").startswith(f"{x[0]}, {x[1]}, ")
    run_finds_primer_events(page)
    # Pasted, with the API's other fields: those are the page's to set.
    body = json.dumps({"signals": [x.tolist()], "threshold": 0.3, "return_scores": False})
    page.fill("#values", "")
    assert page.evaluate(PASTE, body) is False
    expect(status).to_have_text(
        "Pasted 300 values on one line, the one signal of the /v1 request body's “signals” "
        "(its “threshold”, “return_scores” not used: the page's settings apply)."
    )
    expect(page.locator("#values-count")).to_have_text("300 values.")
    # Typed into the box, as it is: run on its signal.
    page.fill("#values", json.dumps({"signals": [x.tolist()]}))
    expect(page.locator("#values-count")).to_have_text("300 values.")
    page.get_by_test_id("run").click()
    assert "300 samples" in wait_for_result(page)
    expect(status).to_have_text("Ran on the one signal of the /v1 request body's “signals”.")
    assert error.is_hidden()

    detects: list[str] = []
    page.on("request", lambda r: detects.append(r.url) if r.url.endswith("/detect") else None)
    refused = (
        (
            json.dumps({"signals": [x.tolist(), x.tolist(), x.tolist()]}),
            "is a /v1 request body of 3 signals: the demo takes one signal. Keep only the one to "
            'look at (the first, say: {"signals": [[…]]}), or send them all to the API (POST /v1/detect).',
        ),
        (
            json.dumps({"inputs": [{"name": "signal", "data": x.tolist()}]}),
            "is a JSON object with no “signals” (its keys are “inputs”): the demo reads a /v1 "
            'request body of one signal, {"signals": [[0.1, 0.2, …]]}, a JSON list of numbers, '
            "or numbers separated by commas, spaces or new lines.",
        ),
        (
            json.dumps({"signals": x.tolist()}),
            "is a JSON object with “signals” that is not a list of signals",
        ),
        ('{"signals": [[0.1, 0.2, NaN]]}', "starts with “{” but is not valid JSON ("),
        (
            '{"signals": [[0.1, null, 0.2]]}',
            "is a /v1 request body whose signal's value 2 is null, not a number",
        ),
    )
    for n, (text, refusal) in enumerate(refused):
        path = tmp_path / f"refused{n}.json"
        path.write_text(text)
        page.set_input_files("#file", path)
        expect(error).to_contain_text(f"refused{n}.json {refusal}")
        assert page.locator("#status").inner_text() == ""
        assert page.get_by_test_id("result").inner_text() == "No result: see the error above."
        page.fill("#values", text)
        page.get_by_test_id("run").click()
        expect(error).to_contain_text(f"The text in “Signal values” {refusal}")
        assert page.get_by_test_id("result").inner_text() == "No result: see the error above."
    assert detects == []
    assert demo.problems() == []


def test_values_in_double_quotes_are_read(browser: Browser, server: Server, tmp_path: Path) -> None:
    """A CSV with every field in double quotes ('"0.1257"', as pandas' QUOTE_ALL or some
    spreadsheets write it) loaded, then the API refused its first value as non-numeric
    ('"0.1257"'). A value in one pair of double quotes is that value; a quoted header is still
    a header."""
    demo = open_demo(browser, server)
    page = demo.page
    x = np.loadtxt(primer_csv(tmp_path / "primer.csv"), skiprows=1)
    path = tmp_path / "quoted.csv"
    path.write_text('"value"\n' + "\n".join(f'"{v:.5f}"' for v in x) + "\n")
    page.set_input_files("#file", path)
    expect(page.locator("#status")).to_have_text(
        'Loaded quoted.csv: 300 values (header line “"value"” skipped). Now run detection.'
    )
    assert '"' not in page.input_value("#values")
    indices = run_finds_primer_events(page)
    # On one line in the box, as typed or pasted: the same samples.
    page.fill("#values", ",".join(f'"{v:.5f}"' for v in x))
    expect(page.locator("#values-count")).to_have_text("300 values.")
    page.get_by_test_id("run").click()
    expect(page.get_by_test_id("result")).to_contain_text(f"peaks at {', '.join(map(str, indices))}. ")
    assert page.locator("#error").is_hidden()
    # A quoted word among them is still not a number: the API's message names it, unquoted.
    page.fill("#values", ", ".join(['"1"'] * 20 + ['"abc"']))
    page.get_by_test_id("run").click()
    error = page.locator("#error")
    expect(error).to_contain_text("HTTP 422")
    assert "Value 21 (“abc”)" in error.inner_text()
    assert "non-numeric value ('abc') at index 20" in error.inner_text()
    assert demo.problems(allow_http=(422,)) == []


def test_semicolons_with_decimal_commas_are_refused_saying_why(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    """A European CSV ("0;0,1257" lines: semicolons between values, decimal commas) was refused
    as a table of three values a line, with no word of its decimal commas, and on one line
    ("0,1257;-0,5;...") it loaded as twice as many integers. Both are refused saying to write
    decimal points (and, for a table, to keep the signal's column)."""
    demo = open_demo(browser, server)
    page = demo.page
    x = np.loadtxt(primer_csv(tmp_path / "primer.csv"), skiprows=1)
    comma = [f"{v:.4f}".replace(".", ",") for v in x]
    error = page.locator("#error")
    path = tmp_path / "table.csv"
    path.write_text("Zeit;Wert\n" + "\n".join(f"{i};{v}" for i, v in enumerate(comma)) + "\n")
    page.set_input_files("#file", path)
    expect(error).to_have_text(
        "table.csv has 2 values on each of its 300 lines, separated by semicolons, with decimal "
        "commas (0,25): the demo takes one signal, as one column (one value per line) or one line, "
        "and here a comma separates values. Write decimal points (0.25), and keep only the "
        "signal's column."
    )
    assert page.input_value("#values") == ""
    path = tmp_path / "line.csv"
    path.write_text(";".join(f'"{v}"' for v in comma) + "\n")  # quoted, as some write them
    page.set_input_files("#file", path)
    expect(error).to_have_text(
        "line.csv is one line of 300 values, separated by semicolons, with decimal commas (0,25): "
        "here a comma separates values, so each would be read as two. Write decimal points (0.25)."
    )
    assert page.input_value("#values") == ""
    assert "Loaded" not in page.locator("#status").inner_text()
    # Pasted: the same, told to paste the signal's column.
    assert page.evaluate(PASTE, "\n".join(f"{i};{v}" for i, v in enumerate(comma * 4))) is False
    expect(error).to_contain_text("Write decimal points (0.25), and paste only the signal's column.")
    # A quoted column with decimal commas gets the hint a bare one gets.
    path = tmp_path / "quoted.csv"
    path.write_text("\n".join(f'"{v}"' for v in comma) + "\n")
    page.set_input_files("#file", path)
    expect(error).to_contain_text("write it with a decimal point (0.25): here a comma separates values.")
    # Semicolons with decimal points: one line loads, a table is told to keep its column.
    path = tmp_path / "points.csv"
    path.write_text(";".join(f"{v:.4f}" for v in x) + "\n")
    page.set_input_files("#file", path)
    expect(page.locator("#status")).to_have_text("Loaded points.csv: 300 values. Now run detection.")
    path = tmp_path / "points2.csv"
    path.write_text("\n".join(f"{i};{v:.4f}" for i, v in enumerate(x)) + "\n")
    page.set_input_files("#file", path)
    expect(error).to_contain_text("points2.csv has 2 values on each of its 300 lines")
    assert error.inner_text().endswith("Keep only the signal's column.")
    assert demo.problems() == []


def test_typed_values_are_checked_as_a_loaded_file_is(browser: Browser, server: Server) -> None:
    """A short table or decimal-comma values typed or pasted into the box (under the 1000 lines
    the page takes over) ran as one signal of the wrong values: time and value interleaved, or
    each number read as two. Run checks the box as a loaded file is checked."""
    demo = open_demo(browser, server)
    page = demo.page
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/detect") else None)
    column = [f"{v:.4f}" for v in np.random.default_rng(5).standard_normal(300)]
    cases = {
        "\n".join(f"{i},{v}" for i, v in enumerate(column)): "has 2 values on each of its 300 lines",
        ";".join(v.replace(".", ",") for v in column): "is one line of 300 values, separated by semicolons",
    }
    for text, said in cases.items():
        page.locator("#values").fill(text)
        page.get_by_test_id("run").click()
        expect(page.locator("#error")).to_contain_text(f"The text in “Signal values” {said}")
        assert page.get_by_test_id("result").inner_text() == "No result: see the error above."
    page.locator("#values").fill("\n".join(column))  # one column: runs
    page.get_by_test_id("run").click()
    assert "300 samples" in wait_for_result(page)
    assert len(sent) == 1
    assert demo.problems() == []


def test_a_json_list_of_lists_is_read_as_its_one_signal(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    """numpy's tolist() of a 2-D array, [[...]] for one row or [[x0], [x1], ...] for a column,
    was split as text and got the API's 422 for "[[0.12"; several rows are several signals."""
    demo = open_demo(browser, server)
    page = demo.page
    x = np.random.default_rng(9).standard_normal(300).round(4)
    for n, text in enumerate((json.dumps([x.tolist()]), json.dumps(x.reshape(-1, 1).tolist()))):
        path = tmp_path / f"rows{n}.json"
        path.write_text(text)
        page.set_input_files("#file", path)
        expect(page.locator("#status")).to_contain_text(f"Loaded rows{n}.json: 300 values")
        assert [float(v) for v in page.input_value("#values").split(",")] == x.tolist()
        page.get_by_test_id("run").click()
        assert "300 samples" in wait_for_result(page)
    page.locator("#values").fill(json.dumps([x[:150].tolist(), x[150:].tolist()]))
    page.get_by_test_id("run").click()
    expect(page.locator("#error")).to_contain_text(
        "is a JSON list of 2 lists, 2 signals: the demo takes one signal"
    )
    assert demo.problems() == []


def test_the_same_file_chosen_again_is_read_again(browser: Browser, server: Server, tmp_path: Path) -> None:
    """Chosen again after a load (edited since), a file fired no change event: the box kept its
    first version. The status line names the file loaded."""
    demo = open_demo(browser, server)
    page = demo.page
    path = tmp_path / "signal.csv"
    path.write_text("\n".join(["0.5"] * 300) + "\n")
    page.set_input_files("#file", path)
    expect(page.locator("#status")).to_contain_text("Loaded signal.csv: 300 values")
    path.write_text("\n".join(["0.25"] * 400) + "\n")
    page.set_input_files("#file", path)
    expect(page.locator("#status")).to_contain_text("Loaded signal.csv: 400 values")
    assert set(page.input_value("#values").split(", ")) == {"0.25"}
    assert demo.problems() == []


# Counts the page's reads of a large text: the tasks (an event's handler, a timer) that split or
# JSON-parse a string of more than 100 000 characters, however many calls each makes.
COUNT_READS = """() => {
    window.largeReads = 0;
    let inTask = false;
    const read = (s) => {
        if (typeof s !== "string" || s.length <= 100000 || inTask) return;
        inTask = true;
        window.largeReads += 1;
        queueMicrotask(() => { inTask = false; });
    };
    const split = String.prototype.split;
    String.prototype.split = function (...args) { read(String(this)); return split.apply(this, args); };
    const parse = JSON.parse;
    JSON.parse = (text, ...args) => { read(text); return parse(text, ...args); };
}"""


def test_typing_in_a_large_text_reads_it_once_typing_pauses(browser: Browser, server: Server) -> None:
    """The value count read the whole text again at every key press: in a box of a million
    values (8.5 MB), 0.1–0.3 s a key on top of the browser's own editing, and about a second for
    a /v1 request body. In a large text it is counted once typing pauses; Run reads the text as
    it is whenever it is clicked, and a short text is counted at every key press still."""
    demo = open_demo(browser, server)
    page = demo.page
    count = page.locator("#values-count")
    x = np.random.default_rng(12).standard_normal(200_000).round(4)
    plain = ", ".join(f"{v:.4f}" for v in x)
    body = json.dumps({"signals": [x.tolist()]})
    page.evaluate(COUNT_READS)
    for text in (plain, body):
        page.locator("#values").fill(text)
        expect(count).to_have_text("200000 values.", timeout=10_000)
        end = len(text) - 3 if text is body else len(text)  # a body's before its "]]}"
        page.evaluate("(end) => document.querySelector('#values').setSelectionRange(end, end)", end)
        page.evaluate("window.largeReads = 0")
        page.keyboard.type(", 0.5, 0.25, 1")  # 14 key presses
        expect(count).to_have_text("200003 values.", timeout=10_000)
        reads = page.evaluate("window.largeReads")
        assert reads <= 2, f"{reads} reads of the whole text for 14 key presses and a pause"
    # Run right after typing, before the pause: the text as it is then.
    page.keyboard.type(", 2")
    page.get_by_test_id("run").click()
    assert "200004 samples" in wait_for_result(page)
    expect(count).to_have_text("200004 values.")
    # A short text: counted at every key press, with no wait.
    page.locator("#values").fill("1, 2")
    page.locator("#values").press("End")
    for typed, shown in ((",", "2 values."), (" ", "2 values."), ("3", "3 values.")):
        page.keyboard.type(typed)
        assert count.inner_text() == shown
    assert demo.problems() == []
