"""The study report in a real browser: headless Chromium, driven over its DevTools
protocol (CDP). The page must load without errors, show every figure, keep script
tags from the data as text, and sort its comparison table by number.

`make test` installs Debian's chromium. Without it the tests skip, except under CI,
where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from rnnscope.report.render import render_report
from support import EVIL, EVIL_MESSAGE, EVIL_PARAM

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT = 30.0  # seconds, for every wait on the browser


def find_browser() -> str:
    found = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; under CI the browser tests must run "
                        "(make test installs Debian's chromium)")
        pytest.skip("chromium is not installed (make test installs it; under CI=true its "
                    "absence fails)")
    return found


class DevTools:
    """A CDP connection to one page: commands by id, events kept in arrival order."""

    def __init__(self, url: str) -> None:
        import websocket  # websocket-client, a dev dependency

        self.socket = websocket.create_connection(url, timeout=TIMEOUT, suppress_origin=True)
        self.events: list[dict] = []
        self._next = 0

    def call(self, method: str, **params) -> dict:
        self._next += 1
        self.socket.send(json.dumps({"id": self._next, "method": method, "params": params}))
        message = self._receive_until(lambda m: m.get("id") == self._next, method)
        if "error" in message:
            raise RuntimeError(f"{method}: {message['error']}")
        return message.get("result", {})

    def wait_for(self, event: str) -> dict:
        for message in self.events:
            if message.get("method") == event:
                return message
        return self._receive_until(lambda m: m.get("method") == event, event)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _receive_until(self, done, what: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv())  # raises on its own timeout
            if "method" in message:
                self.events.append(message)
            if done(message):
                return message
        raise TimeoutError(f"no {what} from the browser within {TIMEOUT} s")

    def close(self) -> None:
        self.socket.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium with remote debugging on a free port; killed at the end."""
    binary = find_browser()
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", "--remote-allow-origins=*",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + TIMEOUT
        while not (port_file.is_file() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start (exit code {process.poll()})")
            time.sleep(0.1)
        yield int(port_file.read_text().splitlines()[0])
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    # the launcher execs chromium, whose helpers share its new process group
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def study_report(study, tmp_path_factory):
    report = render_report(study)
    return report, report.write(tmp_path_factory.mktemp("browser") / "report.html")


@pytest.fixture(scope="module")
def page(browser, study_report):
    """The study report, loaded; window.alert replaced by a recorder before any script."""
    with urllib.request.urlopen(f"http://127.0.0.1:{browser}/json/list",
                                timeout=TIMEOUT) as response:
        targets = json.load(response)
    target = next(t for t in targets if t.get("type") == "page")
    devtools = DevTools(target["webSocketDebuggerUrl"])
    try:
        for domain in ("Runtime", "Log", "Page"):
            devtools.call(f"{domain}.enable")
        devtools.call("Page.addScriptToEvaluateOnNewDocument", source=(
            "window.__alerts = []; window.alert = function (m) { "
            "window.__alerts.push(String(m)); };"))
        devtools.events.clear()
        navigation = devtools.call("Page.navigate", url=Path(study_report[1]).as_uri())
        assert "errorText" not in navigation, navigation
        devtools.wait_for("Page.loadEventFired")
        yield devtools
    finally:
        devtools.close()


def test_page_loads_without_errors_or_exceptions(page):
    assert page.evaluate("document.readyState") == "complete"
    problems = [event for event in page.events if
                event["method"] == "Runtime.exceptionThrown"
                or (event["method"] == "Runtime.consoleAPICalled"
                    and event["params"].get("type") == "error")
                or (event["method"] == "Log.entryAdded"
                    and event["params"]["entry"].get("level") == "error")]
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
