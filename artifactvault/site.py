# -*- test-case-name: tests.test_site -*-
"""
The HTTP site: one structured log line per request (backend, path, cache
status, HTTP status, bytes, duration), including requests whose client left.
The query string is left out of the log: it may carry a signature or token.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request, Site

from artifactvault import __version__, logs

_log = Logger(observer=logs.observer)

SERVER = f"artifactvault/{__version__}".encode()


class VaultRequest(Request):
    backend_name: str | None = None
    cache_status: str | None = None
    error_reason: str | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.started = time.monotonic()
        self._logged = False

    def render(self, resrc: Any) -> None:
        self.setHeader(b"server", SERVER)
        super().render(resrc)

    def connectionLost(self, reason: Any) -> None:
        if not self.finished and not self._logged:
            self.log_line(aborted=True)
        super().connectionLost(reason)

    def log_line(self, aborted: bool = False) -> None:
        """
        Emit the request's event. Its fields are all there for structured
        observers; the text is formatted once here, since text observers
        format every field of every event and this one comes per request.
        """
        self._logged = True
        method = (self.method or b"-").decode("latin-1")
        path = (self.path or b"").decode("utf-8", "replace")
        cache = self.cache_status or "-"
        ms = (time.monotonic() - self.started) * 1000
        backend = f" [{self.backend_name}]" if self.backend_name else ""
        note = (" (client gone)" if aborted else "") + (f": {self.error_reason}" if self.error_reason else "")
        _log.info("{request_line}",
                  request_line=f"{method} {path} {self.code} {cache} {self.sentLength} bytes {ms:.1f} ms{backend}{note}",
                  method=method, path=path, status=self.code, cache=cache, bytes=self.sentLength,
                  ms=ms, backend=self.backend_name, aborted=aborted, reason=self.error_reason)


class VaultSite(Site):
    requestFactory = VaultRequest
    displayTracebacks = False

    def log(self, request: Request) -> None:
        if isinstance(request, VaultRequest) and not request._logged:
            request.log_line()
