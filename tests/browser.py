"""
Headless Chromium (Debian's ``chromium``) for the tests that look at a page
as a person would, driven through the DevTools protocol.

One browser per test run (L{browser}, through L{support.shared_fixture}),
started with the flags this machine needs (no sandbox as root, no
background networking: nothing but 127.0.0.1 is reachable) and a fresh
profile; each test opens its own tab (L{Browser.tab}).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any

from tests import support

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900"]


class BrowserUnavailable(Exception):
    pass


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Tab:
    """One page, over its own DevTools session."""

    def __init__(self, browser: "Browser", session: str, target: str):
        self.browser = browser
        self.session = session
        self.target = target

    def send(self, method: str, **params: Any) -> dict:
        return self.browser.send(method, session=self.session, **params)

    def navigate(self, url: str, timeout: float = 20.0) -> None:
        assert url.startswith("http://127.0.0.1:"), url
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", timeout)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll until C{expression} is truthy in the page; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{expression!r} still {value!r} after {timeout} s")
            time.sleep(0.05)

    def screenshot(self, path: str) -> str:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.browser.send("Target.closeTarget", targetId=self.target)


class Browser:
    """A headless Chromium and one DevTools connection to it."""

    def __init__(self) -> None:
        import websocket  # (websocket-client: a test dependency)
        path = chromium_path()
        if path is None:
            raise BrowserUnavailable("Debian's chromium is not installed (./dev.sh test installs it)")
        self.profile = tempfile.mkdtemp(prefix="av-chromium-")
        self.proc = subprocess.Popen([path, *FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                                      "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ws_url = None
        deadline = time.monotonic() + 30
        assert self.proc.stderr is not None
        while ws_url is None:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise BrowserUnavailable(f"chromium exited with status {self.proc.returncode}")
            m = re.search(r"DevTools listening on (ws://127\.0\.0\.1:\d+/\S+)", line)
            if m:
                ws_url = m.group(1)
            elif time.monotonic() > deadline:
                raise BrowserUnavailable("chromium did not open its DevTools port within 30 s")
        # (its stderr must be read on, or chromium blocks once the pipe is full)
        import threading
        threading.Thread(target=self._drain, daemon=True).start()
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._ids = itertools.count(1)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for _ in self.proc.stderr:
            pass

    def send(self, method: str, session: str | None = None, **params: Any) -> dict:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            answer = json.loads(self.ws.recv())
            if answer.get("id") == ident:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def tab(self) -> Tab:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        tab = Tab(self, session, target)
        tab.send("Page.enable")
        tab.send("Runtime.enable")
        return tab

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def browser() -> Browser:
    """The test run's one browser (started on first use, stopped at exit)."""
    return support.shared_fixture(Browser)


def artifact_path(name: str) -> str:
    """
    Where a test keeps what it made for a person to look at (a screenshot):
    C{$AV_TEST_ARTIFACTS}, else ``test-artifacts/`` in trial's working
    directory (``_trial_temp``); never in git.
    """
    base = os.environ.get("AV_TEST_ARTIFACTS") or os.path.abspath("test-artifacts")
    return os.path.join(base, name)
