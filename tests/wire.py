"""
HTTP/1.1 read off a socket byte by byte, with nothing forgiven.

http.client, curl and pip each tolerate some broken framing (a body longer
than its Content-Length is silently cut, a connection closed early looks like
the end of the body); the property tests need to see exactly what went over
the wire. L{Wire} sends one request at a time on a keep-alive connection and
parses each answer strictly (RFC 9112): status line, headers, then a body
delimited by Content-Length or by valid chunked framing with its last chunk,
or no body at all for HEAD, 204 and 304. Any deviation, and any wait longer
than the deadline, raises L{FramingError}.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5]\d\d) ([\t \x21-\x7e\x80-\xff]*)")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
MAX_HEAD = 64 * 1024


class FramingError(AssertionError):
    """The bytes on the wire are not one well-framed HTTP/1.1 answer (or never came)."""


class ConnectionCut(FramingError):
    """The connection ended before the body announced was complete."""


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: "length", "chunked" or "none" (HEAD, 204, 304)
    framing: str

    def header(self, name: str) -> str | None:
        """The one value of a header; two different values of a single-valued header are an error."""
        values = [v for k, v in self.headers if k == name.lower()]
        if not values:
            return None
        if len(set(values)) > 1:
            raise FramingError(f"{len(values)} different {name} headers: {values}")
        return values[0]

    def describe(self) -> str:
        shown = {k: (v if len(v) < 120 else v[:117] + "...") for k, v in self.headers
                 if k in ("content-length", "content-range", "transfer-encoding", "etag",
                          "last-modified", "x-cache", "content-type", "connection")}
        return f"{self.status} {shown} ({len(self.body)} body bytes, {self.framing})"


class Wire:
    """One client connection to 127.0.0.1:C{port}; every read has a deadline."""

    def __init__(self, port: int, timeout: float):
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.deadline = 0.0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Wire":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, target: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def exchange(self, method: str, target: str, headers: dict[str, str]) -> Response:
        """
        Send a request and read its answer. Every framing problem is raised
        from this one line, so that hypothesis sees one kind of failure
        however the broken bytes happen to arrive.
        """
        self.send(method, target, headers)
        try:
            return self.read_response(method)
        except FramingError as e:
            problem = e
        raise type(problem)(str(problem))

    # -- reading ----------------------------------------------------------------

    def _fill(self, what: str) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise FramingError(f"no complete {what} within {self.timeout} s (have {len(self.buf)} bytes)")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            raise FramingError(f"no complete {what} within {self.timeout} s "
                               f"(have {len(self.buf)} bytes: {self.buf[:80]!r})") from None
        except ConnectionResetError:
            raise ConnectionCut(f"connection reset while reading the {what}") from None
        if not data:
            raise ConnectionCut(f"connection closed while reading the {what} "
                                f"(have {len(self.buf)} bytes: {self.buf[:80]!r})")
        self.buf += data

    def _line(self, what: str, limit: int = MAX_HEAD) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > limit:
                raise FramingError(f"{what} longer than {limit} bytes: {self.buf[:80]!r}")
            self._fill(what)
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exactly(self, n: int, what: str) -> bytes:
        while len(self.buf) < n:
            self._fill(what)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_response(self, method: str) -> Response:
        self.deadline = time.monotonic() + self.timeout
        line = self._line("status line")
        m = _STATUS_LINE.fullmatch(line)
        if not m:
            raise FramingError(f"not an HTTP/1.1 status line: {line[:120]!r}")
        status = int(m.group(1))
        headers = []
        size = len(line)
        while True:
            line = self._line("header section")
            size += len(line) + 2
            if size > MAX_HEAD:
                raise FramingError("header section too long")
            if not line:
                break
            f = _FIELD.fullmatch(line)
            if not f:
                raise FramingError(f"malformed header line: {line[:120]!r}")
            headers.append((f.group(1).decode("latin-1").lower(), f.group(2).decode("latin-1")))
        response = Response(status, headers, b"", "none")
        if status < 200:
            raise FramingError(f"unexpected interim answer {status}")
        te = [v for k, v in headers if k == "transfer-encoding"]
        lengths = {v for k, v in headers if k == "content-length"}
        if method == "HEAD" or status in (204, 304):
            if status in (204, 304) and te:
                raise FramingError(f"{status} with Transfer-Encoding")
            return response
        if te:
            if lengths:
                raise FramingError(f"both Transfer-Encoding {te} and Content-Length {lengths}")
            if [t.strip().lower() for t in ",".join(te).split(",")] != ["chunked"]:
                raise FramingError(f"unexpected Transfer-Encoding {te}")
            response.body, response.framing = self._chunked(), "chunked"
            return response
        if len(lengths) != 1 or not next(iter(lengths)).isdigit() or not next(iter(lengths)).isascii():
            raise FramingError(f"no valid framing for the body: Content-Length {sorted(lengths)}, "
                               "no Transfer-Encoding")
        response.body = self._exactly(int(next(iter(lengths))), "body")
        response.framing = "length"
        return response

    def _chunked(self) -> bytes:
        body = []
        while True:
            line = self._line("chunk size line", 4096)
            m = _CHUNK_SIZE.fullmatch(line)
            if not m:
                raise FramingError(f"bad chunk size line after {sum(map(len, body))} body bytes: {line[:80]!r}")
            n = int(m.group(1), 16)
            if n == 0:
                break
            body.append(self._exactly(n, "chunk"))
            if self._exactly(2, "chunk end") != b"\r\n":
                raise FramingError(f"chunk of {n} bytes not followed by CRLF "
                                   f"(after {sum(map(len, body))} body bytes)")
        while self._line("trailer section"):
            pass
        return b"".join(body)

    def still_usable(self, response: Response, follow_up: str = "/-/health",
                     headers: dict[str, str] | None = None) -> Response | None:
        """
        After a complete answer, nothing else may arrive: with C{Connection:
        close} the connection must end there; else a second request on it
        must get its own well-framed answer (returned).
        """
        if self.buf:
            raise FramingError(f"{len(self.buf)} bytes after the body: {self.buf[:80]!r}")
        if (response.header("connection") or "").lower() == "close":
            self.deadline = time.monotonic() + self.timeout
            try:
                self._fill("end of connection")
            except ConnectionCut:
                return None
            raise FramingError(f"bytes after the body of a Connection: close answer: {self.buf[:80]!r}")
        try:
            return self.exchange("GET", follow_up, headers or {})
        except FramingError as e:
            raise FramingError(f"the connection was not usable after that answer: {e}") from None
