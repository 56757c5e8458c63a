"""Drive headless Chromium from tests over the Chrome DevTools Protocol, with the stdlib only.

Chromium is started with ``--remote-debugging-port=0``; it writes the port it picked to
``DevToolsActivePort`` in its profile folder, and this module talks to the first page target
over a minimal WebSocket client (RFC 6455: masked client frames, unmasked server frames).

    with Chromium() as browser:
        browser.set_viewport(1200, 900)
        browser.navigate("file:///tmp/site/index.html")
        rows = browser.evaluate("document.querySelectorAll('tr').length")
        browser.screenshot(Path("index.png"))

The browser comes from ``$PITE_CHROMIUM`` or ``chromium`` on the PATH (Debian's ``chromium``
package); :func:`find_chromium` raises a message saying how to install it when it is missing.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

LAUNCH_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--hide-scrollbars",
)  # fmt: skip
INSTALL_HINT = (
    "headless Chromium is needed for the viewer tests but was not found. Install Debian's package "
    "(`sudo apt-get install -y chromium`) or set PITE_CHROMIUM=/path/to/chromium."
)


class BrowserError(RuntimeError):
    """Chromium failed to start, a DevTools call failed, or page JavaScript threw."""


def find_chromium() -> str:
    """Path of the Chromium executable: ``$PITE_CHROMIUM``, else chromium on the PATH."""
    explicit = os.environ.get("PITE_CHROMIUM")
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise BrowserError(f"PITE_CHROMIUM={explicit} is not an executable file. {INSTALL_HINT}")
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError(INSTALL_HINT)


class _WebSocket:
    """A blocking WebSocket client for one ``ws://127.0.0.1:port/path`` URL (text frames only)."""

    def __init__(self, url: str, timeout: float):
        if not url.startswith("ws://"):
            raise BrowserError(f"expected a ws:// URL, got {url}")
        hostport, _, path = url[len("ws://"):].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise BrowserError("DevTools closed the connection during the WebSocket handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise BrowserError(f"DevTools refused the WebSocket handshake: {head.decode(errors='replace')}")

    def _recv_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise BrowserError("DevTools closed the connection")
            data += chunk
        return bytes(data)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        """The next complete text message (control frames are answered or skipped)."""
        parts: list[bytes] = []
        while True:
            first, second = self._recv_exact(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._recv_exact(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._recv_exact(8))[0]
            mask = self._recv_exact(4) if second & 0x80 else None
            payload = self._recv_exact(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise BrowserError("DevTools closed the WebSocket")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if first & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class Chromium:
    """A headless Chromium with one page, driven over DevTools; use as a context manager."""

    def __init__(self, executable: str | None = None, timeout: float = 30.0):
        self.executable = executable or find_chromium()
        self.timeout = timeout
        self._ids = itertools.count(1)
        self.events: list[dict] = []
        self.console: list[str] = []
        self._profile = tempfile.mkdtemp(prefix="pite-chromium-")
        self._proc: subprocess.Popen | None = None
        self._ws: _WebSocket | None = None

    def __enter__(self) -> "Chromium":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        args = [self.executable, *LAUNCH_FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
                "about:blank"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace")[-2000:] if self._proc.stderr else ""
                raise BrowserError(f"Chromium exited with code {self._proc.returncode} at start:\n{err}")
            if time.monotonic() > deadline:
                self.close()
                raise BrowserError(f"Chromium did not open its DevTools port within {self.timeout:.0f} s")
            time.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        pages = []
        while not pages and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout) as reply:
                pages = [t for t in json.load(reply) if t.get("type") == "page"]
            if not pages:
                time.sleep(0.05)
        if not pages:
            self.close()
            raise BrowserError("Chromium started without a page target")
        self._ws = _WebSocket(pages[0]["webSocketDebuggerUrl"], self.timeout)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        shutil.rmtree(self._profile, ignore_errors=True)

    # --- DevTools calls --------------------------------------------------------------------

    def _record(self, message: dict) -> None:
        if message.get("method") == "Runtime.consoleAPICalled":
            args = message["params"].get("args", [])
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif message.get("method") == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            self.console.append("exception: " + details.get("exception", {}).get("description", details["text"]))
        self.events.append(message)

    def call(self, method: str, **params: Any) -> dict:
        """Send one DevTools command and return its result; events that arrive meanwhile are kept."""
        if self._ws is None:
            raise BrowserError("the browser is not started")
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method} failed: {message['error']}")
                return message.get("result", {})
            self._record(message)

    def wait_event(self, method: str, since: int = 0) -> dict:
        """The first event ``method`` recorded at or after position ``since`` of :attr:`events`."""
        while True:
            for message in self.events[since:]:
                if message.get("method") == method:
                    return message
            since = len(self.events)
            self._record(json.loads(self._ws.recv()))

    # --- conveniences ----------------------------------------------------------------------

    def set_viewport(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def navigate(self, url: str) -> float:
        """Open ``url`` and wait for its load event; returns the wall seconds it took."""
        started = time.perf_counter()
        mark = len(self.events)
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url} failed: {result['errorText']}")
        self.wait_event("Page.loadEventFired", since=mark)
        return time.perf_counter() - started

    def evaluate(self, expression: str, await_promise: bool = True) -> Any:
        """Value of a JavaScript expression in the page (promises are awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=await_promise, timeout=int(self.timeout * 1000))  # fmt: skip
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error in {expression[:80]!r}: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout} s waiting for {expression!r}")
            time.sleep(0.05)

    def mouse_move(self, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def hover(self, selector: str) -> None:
        """Move the mouse to the centre of the first element matching ``selector``."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if box is None:
            raise BrowserError(f"no element matches {selector!r}")
        self.mouse_move(*box)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
