"""
A scriptable HTTP upstream for fault injection in integration tests.

Real upstreams do not cut connections halfway or stall on demand; this small
threaded server on 127.0.0.1 does, so tests can check what the real daemon
does when they happen. Each path maps to a L{Script} (a path with a query
string falls back to the script of the path alone: a token endpoint).

Stalls: before anything (C{hold_headers}), after the status line and the
first header (C{stall_in_headers}), or after C{cut_at} body bytes
(C{resume}). A stalled answer waits for its event; L{FakeUpstream.close}
sets them all. Other faults: a cut that is a reset (C{reset}), garbage
instead of HTTP (C{raw}), a slow body (C{pace}), statuses in turn (C{flap}).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Script:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: Send only this many body bytes, then…
    cut_at: int | None = None
    #: …wait for this event before going on (None: close the connection at once).
    resume: threading.Event | None = None
    #: If set after resuming, close instead of sending the rest.
    close_after_resume: bool = False
    #: Where the body is cut, reset the connection (an RST) instead of closing it (a FIN).
    reset: bool = False
    #: Wait for this event before sending anything at all.
    hold_headers: threading.Event | None = None
    #: Send the status line and the first header, then wait for this event.
    stall_in_headers: threading.Event | None = None
    #: Answer 401 with C{WWW-Authenticate: <challenge>} unless the request's
    #: Authorization is this (a registry that wants a token).
    authorization: str | None = None
    challenge: str = ""
    #: Bytes per write (to spread a body over many packets).
    chunk: int = 65536
    #: Send the body with ``Transfer-Encoding: chunked`` (one chunk per write), no Content-Length.
    chunked: bool = False
    #: The Content-Length field exactly as sent (any bytes, e.g. b"12abc"), instead of the body's length.
    content_length: bytes | None = None
    #: Send no length at all and end the body by closing the connection.
    close_delimited: bool = False
    #: Send these bytes as they are instead of an HTTP answer, then close (garbage).
    raw: bytes | None = None
    #: Seconds to wait after each write of C{chunk} bytes (a slow upstream).
    pace: float = 0.0
    #: Statuses answered in turn, one per request, cycling (an upstream that flaps);
    #: the body of a status other than 200 is C{b"flap"}.
    flap: tuple[int, ...] = ()
    #: How many requests this script has answered (for C{flap}).
    served: int = 0
    #: Header field lines sent as they are, after C{headers} (repeats allowed:
    #: two Transfer-Encoding lines, a Connection naming others).
    raw_headers: list[tuple[str, str]] = field(default_factory=list)
    #: The body exactly as it goes on the wire (chunked or coded by the test),
    #: instead of C{body}; no length is added, and the connection closes after it.
    wire_body: bytes | None = None


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.1") -> None:
        """Listen on C{host}, 127.0.0.1 or ::1 (an upstream given as an IPv6 literal)."""
        self.host = host
        self.scripts: dict[str, Script] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.headers_sent = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _answer(self, head: bool) -> None:
                owner.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                script = owner.scripts.get(self.path) or owner.scripts.get(self.path.partition("?")[0])
                if script is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if script.hold_headers is not None:
                    script.hold_headers.wait(60)
                if script.raw is not None:
                    self._send(script.raw, script)
                    self.close_connection = True
                    return
                status, body = script.status, script.body
                if script.flap:
                    status = script.flap[script.served % len(script.flap)]
                    script.served += 1
                    body = body if status == 200 else b"flap"
                if script.authorization is not None and \
                        self.headers.get("Authorization") != script.authorization:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", script.challenge)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = script.headers.get("ETag")
                if etag is not None and self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(status)
                if script.stall_in_headers is not None:
                    self.send_header("X-Stall", "here")
                    self.flush_headers()
                    script.stall_in_headers.wait(60)
                for k, v in script.headers.items():
                    self.send_header(k, v)
                for k, v in script.raw_headers:
                    self.send_header(k, v)
                if script.wire_body is not None:
                    self.close_connection = True
                    self.end_headers()
                    if not head:
                        self.wfile.write(script.wire_body)
                    self.wfile.flush()
                    owner.headers_sent.set()
                    return
                if script.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                elif script.close_delimited:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                elif script.content_length is not None:
                    self._headers_buffer.append(b"Content-Length: " + script.content_length + b"\r\n")
                elif "Content-Length" not in script.headers and status not in (204, 304):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                owner.headers_sent.set()
                if head:
                    return
                first = body if script.cut_at is None else body[:script.cut_at]
                self._send(first, script)
                if script.cut_at is None:
                    self._send_end(script)
                    return
                if script.resume is not None:
                    script.resume.wait(120)
                    if not script.close_after_resume:
                        self._send(body[script.cut_at:], script)
                        self._send_end(script)
                        return
                self.close_connection = True
                if script.reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                self.connection.shutdown(2)

            def _send(self, data: bytes, script: Script) -> None:
                try:
                    for i in range(0, len(data), script.chunk):
                        piece = data[i:i + script.chunk]
                        if script.chunked:
                            piece = b"%x\r\n" % len(piece) + piece + b"\r\n"
                        self.wfile.write(piece)
                        if script.pace:
                            self.wfile.flush()
                            time.sleep(script.pace)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send_end(self, script: Script) -> None:
                """The end of a chunked body: the last chunk, no trailers."""
                if script.chunked:
                    try:
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        pass

        server_class = ThreadingHTTPServer
        if ":" in host:
            class server_class(ThreadingHTTPServer):  # type: ignore[no-redef]
                address_family = socket.AF_INET6
        self.server = server_class((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p == path)

    def close(self) -> None:
        for script in self.scripts.values():
            for event in (script.resume, script.hold_headers, script.stall_in_headers):
                if event is not None:
                    event.set()
        self.server.shutdown()
        self.server.server_close()
