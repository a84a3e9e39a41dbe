"""The study report in a real browser: headless Chromium driven by Selenium through
Debian's chromedriver. The page must load without errors, show every figure, keep script
tags from the data as text, and sort its comparison table by number.

`make test` installs Debian's chromium and chromium-driver. Without them the tests skip,
except under CI, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from torch import nn

from rnnscope.report.render import render_report
from support import EVIL, EVIL_MESSAGE, EVIL_PARAM, metrics_lines, watched_loop

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")
TIMEOUT = 30  # seconds, for every wait on the browser
# No network here: nothing may try to reach one (updates, sync, metrics), and no GPU.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


def missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed; under CI the browser tests must run "
                    f"(make test installs Debian's chromium and chromium-driver)")
    pytest.skip(f"{what} is not installed (make test installs it; under CI=true its absence "
                f"fails)")


def find(names: tuple[str, ...], what: str) -> str:
    found = next((path for path in map(shutil.which, names) if path), None)
    if found is None:
        missing(what)
    return found


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """Headless Chromium under Selenium, with a fresh profile; quit at the end. The
    driver binary is given, so Selenium Manager never tries to download one."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find(BROWSERS, "chromium")
    for flag in (*CHROMIUM_FLAGS,
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console and errors
    service = Service(executable_path=find(DRIVERS, "chromium-driver"))
    browser = webdriver.Chrome(options=options, service=service)
    browser.set_page_load_timeout(TIMEOUT)
    browser.set_script_timeout(TIMEOUT)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def study_report(study, tmp_path_factory):
    report = render_report(study)
    return report, report.write(tmp_path_factory.mktemp("browser") / "report.html")


class LoadedPage:
    """The loaded report: scripts evaluated in it, and the browser's log of it."""

    def __init__(self, browser, log: list[dict]) -> None:
        self.browser, self.log = browser, log

    def evaluate(self, expression: str):
        return self.browser.execute_script(f"return ({expression});")


@pytest.fixture(scope="module")
def page(driver, study_report):
    """The study report, loaded; window.alert replaced by a recorder before any script."""
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "window.__alerts = []; window.alert = function (m) { "
        "window.__alerts.push(String(m)); };")})
    driver.get_log("browser")  # drop what about:blank logged
    driver.get(Path(study_report[1]).as_uri())  # returns once the load event has fired
    return LoadedPage(driver, driver.get_log("browser"))


def test_page_loads_without_errors_or_exceptions(page):
    assert page.evaluate("document.readyState") == "complete"
    # Uncaught exceptions, console.error calls and failed loads are SEVERE entries.
    problems = [entry for entry in page.log if entry.get("level") in ("SEVERE", "ERROR")]
    assert problems == []


def test_every_embedded_figure_is_shown(page, study_report):
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth,"
                           " i.naturalHeight])")
    assert images and all(done and width > 0 and height > 0 for done, width, height in images)
    declared = int(page.evaluate("document.body.dataset.figures"))
    assert len(images) == declared == study_report[0].figures == 7


def test_names_with_script_tags_show_as_text_and_never_run(page):
    text = page.evaluate("document.body.innerText")
    for evil in (EVIL, EVIL_PARAM, EVIL_MESSAGE):
        assert evil in text
    assert page.evaluate("document.scripts.length") == 1  # the report's sorting script
    assert page.evaluate("document.querySelectorAll('[onerror], [onload]').length") == 0
    assert page.evaluate("window.__alerts") == []


COLUMN = """(name => {
  const table = document.querySelector("table.comparison");
  const index = Array.from(table.tHead.rows[0].cells).findIndex(c => c.textContent === name);
  return index;
})"""


def column_values(page, name: str) -> list[str]:
    return page.evaluate(f"""(() => {{
      const table = document.querySelector("table.comparison"), index = {COLUMN}({name!r});
      return Array.from(table.tBodies[0].rows).map(r => r.cells[index].textContent);
    }})()""")


def click_header(page, name: str) -> str:
    return page.evaluate(f"""(() => {{
      const table = document.querySelector("table.comparison");
      const header = table.tHead.rows[0].cells[{COLUMN}({name!r})];
      header.click();
      return header.getAttribute("aria-sort");
    }})()""")


def test_clicking_a_numeric_header_sorts_by_number(page):
    assert column_values(page, "task.seq_len") == ["20", "9", "12", "100", "5"]
    assert click_header(page, "task.seq_len") == "ascending"
    assert column_values(page, "task.seq_len") == ["5", "9", "12", "20", "100"]  # not "100" < "12"
    assert column_values(page, "run") == ["broken-run", "lstm-T9", "tanh-T12", EVIL,
                                          "pending-run"]
    assert click_header(page, "task.seq_len") == "descending"
    assert column_values(page, "task.seq_len") == ["100", "20", "12", "9", "5"]
    # runs without a value (pending, error) stay last in either direction
    click_header(page, "reach")
    reach = column_values(page, "reach")
    assert reach[3:] == ["-", "-"] and reach[:3] == sorted(reach[:3], key=int)
    click_header(page, "run")
    assert column_values(page, "run") == sorted(column_values(page, "run"), key=str.lower)


# A run of the user's own loop (rnnscope.watch), rendered and opened as a user would.


@pytest.fixture(scope="module")
def watched_page(driver, tmp_path_factory):
    """The report of a plain 60-step loop watched every 5 steps, loaded."""
    run = tmp_path_factory.mktemp("watched") / "run"
    watched_loop(run, steps=60, every=5, rnn=nn.RNN, seq_len=40)
    report = render_report(run)
    path = report.write()
    driver.get_log("browser")
    driver.get(Path(path).as_uri())
    return LoadedPage(driver, driver.get_log("browser")), report, run


def test_a_watched_run_renders_its_heat_map_and_logged_loss(watched_page):
    page, report, run = watched_page
    assert page.evaluate("document.readyState") == "complete"
    assert [e for e in page.log if e.get("level") in ("SEVERE", "ERROR")] == []
    figures = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, "
                            "i.naturalWidth, i.naturalHeight])")
    shown = {alt.split(":")[0]: done and width > 0 and height > 0
             for alt, done, width, height in figures}
    assert shown == {"Gradient flow over training": True,
                     "Gradient norm against steps back at the first, middle and last probe":
                         True,
                     "Loss and held-out metric against chance and the solved threshold": True}
    probes = [line for line in metrics_lines(run) if "flow" in line]
    assert len(probes) == 13  # the heat map's rows: step 1, then every 5th of 60
    text = page.evaluate("document.body.innerText")
    assert "60 training steps watched" in text and "13 recordings of the gradient flow" in text
    assert "skipped: needs gradient norms" in text  # the clipping figure says what it needs
