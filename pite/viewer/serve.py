"""`pite view --serve`: serve a built viewer site on 127.0.0.1 with the standard library.

A static server is all the site needs; this one adds HTTP range requests (``206 Partial
Content``), which browsers need to seek in a video, and keeps its log quiet.
"""

from __future__ import annotations

import functools
import os
import re
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "127.0.0.1"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class SiteRequestHandler(SimpleHTTPRequestHandler):
    """Static files of one folder, with single byte-range requests."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mp4": "video/mp4", ".webm": "video/webm",
                      ".js": "text/javascript", ".gif": "image/gif"}  # fmt: skip

    def send_head(self):  # noqa: ANN201 (the base class's signature)
        self._remaining = None
        match = _RANGE.match(self.headers.get("Range", "").strip())
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        first, last = match.groups()
        if first == "":  # "bytes=-N": the last N bytes
            start, end = max(0, size - int(last or 0)), size - 1
        else:
            start, end = int(first), min(size - 1, int(last)) if last else size - 1
        if start >= size or start > end:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        handle = open(path, "rb")  # noqa: SIM115 (closed by copyfile's caller)
        handle.seek(start)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self._remaining = end - start + 1
        self.end_headers()
        return handle

    def copyfile(self, source, outputfile) -> None:  # noqa: ANN001
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        while remaining > 0:
            chunk = source.read(min(1 << 16, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)
        self._remaining = None

    def end_headers(self) -> None:
        if self.command in ("GET", "HEAD"):
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def make_server(site: str | os.PathLike, port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for ``site`` on 127.0.0.1:``port`` (0 picks a free port); call
    ``serve_forever()`` on it, and ``server.server_address[1]`` is the port."""
    site = Path(site)
    if not (site / "index.html").is_file():
        raise FileNotFoundError(f"{site} has no index.html; build the site first")
    handler = functools.partial(SiteRequestHandler, directory=str(site))
    return ThreadingHTTPServer((HOST, port), handler)


def serve(site: str | os.PathLike, port: int = 8000, log=print) -> None:
    """Serve ``site`` until interrupted (Ctrl-C)."""
    with make_server(site, port) as server:
        log(f"serving {site} at http://{HOST}:{server.server_address[1]}/  (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log("stopped")
