"""A real headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``): no extra package.

Chromium reads commands from its fd 3 and writes answers and events to its fd 4, each a JSON
message ended by a NUL byte. ``Browser`` opens one page, navigates, evaluates script (awaiting
promises), accepts or refuses ``confirm()`` dialogs, sets a file input's file, sizes the window
as a laptop or a phone, and takes screenshots.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _above_nine(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class BrowserError(AssertionError):
    """A DevTools command answered an error, or a page script threw."""


class Browser:
    """One headless Chromium with one page; a context manager that stops it."""

    def __init__(self, profile: Path, *, width: int = 1280, height: int = 900) -> None:
        assert CHROMIUM, "no Chromium"
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chromium's ends move above fd 9, so that putting them on 3 and 4 never closes one of them.
        to_chrome_r, from_chrome_w = (_above_nine(fd) for fd in (to_chrome_r, from_chrome_w))
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--lang=en-US", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
        # bash (dash reads one digit of an fd) puts the pipe ends on fds 3 and 4 of Chromium, where it looks.
        script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        quiet = None if os.environ.get("BROWSER_DEBUG") else subprocess.DEVNULL  # BROWSER_DEBUG=1: its stderr
        self.proc = subprocess.Popen(["bash", "-c", script, CHROMIUM, *args], pass_fds=(to_chrome_r, from_chrome_w),
                                     stdout=subprocess.DEVNULL, stderr=quiet, env={**os.environ, "LANG": "en_US.UTF-8"})
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next = 0
        self._lock = threading.Lock()
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.dialogs: list[str] = []
        self.accept_dialogs = True
        self.session = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime"):
            self.call(f"{domain}.enable")
        self.size(width, height)

    # --- the protocol ---------------------------------------------------------------------------
    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = os.read(self._from_chrome, 1 << 16)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self._answers:
                    self._answers[msg["id"]].put(msg)
                elif msg.get("method") == "Page.javascriptDialogOpening":
                    self.dialogs.append(msg["params"]["message"])
                    self._send("Page.handleJavaScriptDialog", {"accept": self.accept_dialogs},
                               msg.get("sessionId"))
                else:
                    self.events.put(msg)

    def _send(self, method: str, params: dict[str, Any], session: str | None) -> int:
        with self._lock:
            self._next += 1
            n = self._next
            self._answers[n] = queue.Queue()
            msg: dict[str, Any] = {"id": n, "method": method, "params": params}
            if session:
                msg["sessionId"] = session
            os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        return n

    def call(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """Send one command (to the page once attached) and wait for its answer."""
        n = self._send(method, params, self.session or None)
        try:
            msg = self._answers[n].get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"{method}: no answer in {timeout}s") from None
        finally:
            self._answers.pop(n, None)
        if "error" in msg:
            raise BrowserError(f"{method}: {msg['error']}")
        result: dict[str, Any] = msg.get("result", {})
        return result

    # --- what tests do --------------------------------------------------------------------------
    def size(self, width: int, height: int, *, mobile: bool = False, scale: float = 1.0) -> None:
        """The viewport: a laptop's, or a phone's with ``mobile``."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=scale,
                  mobile=mobile)

    def goto(self, url: str, ready: str = "document.body && document.body.dataset.loaded === '1'",
             timeout: float = 60.0) -> None:
        """Open ``url`` and wait until the ``ready`` expression is true."""
        with contextlib.suppress(BrowserError):  # the page being left must not pass for the page asked for
            self.eval("document.body && delete document.body.dataset.loaded")
        self.call("Page.navigate", url=url)
        self.wait(ready, timeout)

    def eval(self, expression: str, timeout: float = 60.0) -> Any:
        """The value of a script expression (a promise is awaited)."""
        out = self.call("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in out:
            raise BrowserError(f"{expression[:200]}: {out['exceptionDetails']}")
        return out.get("result", {}).get("value")

    def wait(self, expression: str, timeout: float = 60.0) -> Any:
        """Until the expression is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.eval(expression)
            except BrowserError:
                value = None  # the page is navigating: its context is gone for a moment
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"waited {timeout}s for {expression}; page says: {self.text('body')[:3000]}")
            time.sleep(0.1)

    def text(self, selector: str) -> str:
        """The text of the first element ``selector`` matches ('' when none does)."""
        value = self.eval(f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''")
        return str(value)

    def click(self, selector: str) -> None:
        """Click the first element ``selector`` matches."""
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    def set_file(self, selector: str, path: Path) -> None:
        """Put a file in a file input, as a person choosing it does."""
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def screenshot(self, path: Path, *, full: bool = True) -> None:
        """A PNG of the page (all of it with ``full``)."""
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=full)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        """Stop Chromium and reap it."""
        try:
            n = self._send("Browser.close", {}, None)  # the browser's own command, not the page's
            self._answers[n].get(timeout=10)
        except (queue.Empty, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
