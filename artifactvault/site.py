# -*- test-case-name: tests.test_site -*-
"""
The HTTP site: one structured log line per request (backend, path, cache
status, HTTP status, bytes, duration), including requests whose client left.
The query string is left out of the log: it may carry a signature or token;
so is the userinfo of a target (a password in a proxy request's URI:
L{artifactvault.logs.without_userinfo}).
A request's duration counts from when its first bytes arrived (the
channel's clock reading for the read that held the first byte of its
request line), not from when Twisted made its request object: a pipelined
request waits, parsed but unanswered, until the one before it is done, and
that wait is the client's too; it does not count from the bytes buffered
before its own.

A request whose target is an absolute URI (``GET http://host/path``: a
client using the vault as its HTTP proxy, like apt with
``Acquire::http::Proxy``) is answered as the local path a backend claims
for that host (L{artifactvault.root.Root.route_absolute}); one no backend
claims, and every ``CONNECT``, gets a 403: the vault is never an open proxy.
One whose target names the vault itself (the connection's own address and
port: L{own_path}) is no proxy request: it is answered as its path, as if
the client had sent that (RFC 9112 3.2.2).

A TLS handshake sent to a plain HTTP port gets a 400 at once, as Go's
servers answer it: clients such as skopeo and docker try https first and
fall back to http only when that attempt fails, and a server that just waits
for a request line costs each of them a 10 s timeout.

Limits against clients that misbehave (L{ClientLimits}, top-level keys):
Twisted's channel drops a connection whose request line is too long without
a word, and answers other excesses with a bare ``400``. Here each limit gets
its own status, a reason and ``Connection: close``, as nginx answers them:
a request line or path too long → 414, too many or too large header fields
→ 431, a body larger than anything here takes → 413 (before a byte of it is
read, from its ``Content-Length``), an HTTP/1.1 request without ``Host`` or
any with two (RFC 9112 3.2), or another malformed head → 400. A
request's head (and body) must arrive within C{client_header_timeout} of the
connection's start or of its own first byte, however slowly it trickles
(slowloris): then a 408 if some of it came, a plain close if nothing did.
One client address may hold C{max_connections_per_client} connections; the
next one is answered 503 at once. Each refusal is one log line, as any
request is, and counted.

Requests pipelined on one connection (apt sends its downloads so, ten deep)
are answered one after the other, in order, as HTTP/1.1 demands; Twisted
does not even parse one until the one before it is answered, so each cold
miss would wait for the download of the one before it. While a request is
answered, the channel therefore looks at the requests buffered behind it and
lets the site start the download of each plain GET a backend says is safe
to fetch ahead (an immutable artifact: L{artifactvault.root.Root.prefetch}):
when its turn comes it joins that download, or finds it stored. At most
L{VaultSite.prefetch_limit} such downloads per connection are ahead of
their requests; a request with a body, a Range or a query is never fetched
ahead.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections import deque
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import RESPONSES, HTTPChannel, datetimeToString
from twisted.web.server import Request, Site

from artifactvault import __version__, logs
from artifactvault.config import ClientLimits
from artifactvault.serve import plain_error

_log = Logger(observer=logs.observer)

SERVER = f"artifactvault/{__version__}".encode()
#: The first byte of a TLS record carrying a handshake.
TLS_HANDSHAKE = b"\x16"
#: The socket option that acknowledges at once what was read (Linux; None elsewhere).
QUICKACK = getattr(socket, "TCP_QUICKACK", None)
#: A request target in absolute form (RFC 9112 3.2.2): a scheme, then "://".
_ABSOLUTE = logs.ABSOLUTE_FORM
#: What a TLS handshake on a plain HTTP port is told (a 400, as Go's servers answer it).
NOT_TLS = "This is a plain HTTP server: TLS is not spoken here."
#: How much of a refused request's target goes into its log line.
LOGGED_TARGET = 200
#: The reason phrases of the refusals (RFC 9110's: Twisted has older ones, and no 431).
PHRASES = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
           431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def own_fields() -> list[tuple[bytes, bytes]]:
    """
    The fields every answer of the vault's carries, also those written
    here without Twisted's L{Request.process} (which sets them for the
    rest): C{Server}, and C{Date}, which an origin server with a clock
    must send (RFC 9110 6.6.1).
    """
    return [(b"Server", SERVER), (b"Date", datetimeToString())]


def refusal(status: int, reason: str, headers: tuple[bytes, ...] = ()) -> bytes:
    """A whole answer that ends its connection: C{status}, C{reason} as its plain-text body."""
    body = (reason + "\n").encode("utf-8", "replace")
    head = [b"HTTP/1.1 %d %s" % (status, PHRASES.get(status) or RESPONSES.get(status, b"Error")),
            *(name + b": " + value for name, value in own_fields()),
            b"Content-Type: text/plain; charset=utf-8", b"Content-Length: %d" % len(body),
            b"Cache-Control: no-store", b"Connection: close", *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class VaultRequest(Request):
    #: Asked of the vault as an HTTP proxy (an absolute URI): credentials come in Proxy-Authorization.
    proxied = False
    backend_name: str | None = None
    #: Who the request came from, once the gate let a user in (L{artifactvault.auth.gate}).
    auth_user: str | None = None
    cache_status: str | None = None
    error_reason: str | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        channel = self.channel
        self._clock = getattr(getattr(channel, "site", None), "monotonic", time.monotonic)
        #: When the data holding this request's first line arrived.
        arrived = getattr(channel, "arrived", None)
        self.started = arrived if arrived is not None else self._clock()
        self._logged = False
        site = getattr(channel, "site", None)
        if isinstance(site, VaultSite):
            site.active.add(self)

    def render(self, resrc: Any) -> None:
        self.setHeader(b"server", SERVER)
        super().render(resrc)

    def _handleStar(self) -> None:
        # (Twisted answers "OPTIONS *" itself, without render(): named as the vault too)
        self.setHeader(b"server", SERVER)
        super()._handleStar()  # type: ignore[misc]

    _body_received = 0

    def handleContentChunk(self, data: bytes) -> None:
        # (a chunked body announces no length: it is counted as it comes)
        self._body_received += len(data)
        channel = self.channel
        if isinstance(channel, VaultChannel) and self._body_received > channel.limits.max_request_body:
            channel.refuse(413, f"the request body is larger than {channel.limits.max_request_body} bytes")
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        if self.method == b"CONNECT" or _ABSOLUTE.match(self.uri):
            local = None if self.method == b"CONNECT" else self._local_target()
            if local is None:
                self._refuse_proxy()
                return
            self.uri = local
            self.path = local.partition(b"?")[0]
        super().process()

    def _local_target(self) -> bytes | None:
        """
        The path an absolute-form target is answered as: its own, when it
        names the vault itself (L{VaultChannel.origin_form}: no proxy
        request, answered as if it were the path); else what a backend
        that claims its host gives (a proxy request); else None.
        """
        own = self.channel.origin_form(self.uri)
        if own is not None:
            return own
        local = self.channel.site.route_absolute(self.uri)
        self.proxied = local is not None
        return local

    def _refuse_proxy(self) -> None:
        """
        403 for a proxy request no backend claims: its target is named as the
        log shows it (L{logs.request_path}: never a path's query, never a
        password in its userinfo, nothing that could garble a line).
        """
        target = logs.request_path(self.uri.partition(b"?")[0])
        self.site = self.channel.site
        self.prepath, self.postpath = [], []
        self.error_reason = f"not an open proxy: no backend answers for {target}"
        for name, value in own_fields():
            self.setHeader(name, value)
        plain_error(self, 403, self.error_reason)

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
        method = logs.printable((self.method or b"-").decode("latin-1"))
        path = logs.request_path(self.path or b"")
        cache = self.cache_status or "-"
        ms = (self._clock() - self.started) * 1000
        backend = f" [{self.backend_name}]" if self.backend_name else ""
        user = f" user={logs.printable(self.auth_user)}" if self.auth_user else ""
        note = (" (client gone)" if aborted else "") + (f": {self.error_reason}" if self.error_reason else "")
        _log.info("{request_line}",
                  request_line=f"{method} {path} {self.code} {cache} {self.sentLength} bytes {ms:.1f} ms"
                               f"{backend}{user}{note}",
                  method=method, path=path, status=self.code, cache=cache, bytes=self.sentLength,
                  ms=ms, backend=self.backend_name, aborted=aborted, reason=self.error_reason,
                  user=self.auth_user)
        site = getattr(self.channel, "site", None) if self.channel is not None else None
        if isinstance(site, VaultSite):
            site.active.discard(self)
            for observer in site.observers:
                observer.request_done(self)


class VaultChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that answers a TLS handshake with a 400, knows
    when the bytes of the request it parses next arrived, and holds clients
    to its L{ClientLimits} (see the module doc).

    @ivar arrived: The site clock's reading when the request now being
        parsed began to arrive: the read that held the first byte of its
        request line, also for bytes Twisted buffered while it answered the
        requests before them (pipelining), and when its line came in pieces.
    @ivar limits: The site's L{ClientLimits}.
    @ivar client_host: The client's address, as counted for
        C{max_connections_per_client} (None: not counted).
    """

    _first = True
    arrived: float | None = None
    #: Bytes read from the connection so far (not counting Twisted's replays of buffered ones).
    _received = 0
    #: Whether Twisted is passing bytes it buffered through dataReceived again (see requestDone).
    _replaying = False
    limits = ClientLimits()
    client_host: str | None = None
    #: The head now being parsed: its lines so far, bytes of header fields, fields.
    _lines = 0
    _head_size = 0
    _fields = 0
    #: The request line now parsed: (method, target), for a refusal's log line.
    _request_line: tuple[bytes, bytes] | None = None
    #: The request whose head or body is arriving (Twisted made it at its first line).
    _parsing: Any = None
    _head_timer: Any = None
    _abort_call: Any = None
    _refused = False
    _host: Any = None
    #: Whether a read that ends inside a request's head is acknowledged at once (L{_ack_now}).
    _quickack = QUICKACK is not None

    def getHost(self) -> Any:
        """The local address, asked of the socket once: Twisted asks for it anew with every request."""
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def origin_form(self, target: bytes) -> bytes | None:
        """
        The path (and query) of C{target}, an absolute-form request target,
        when it names this very connection's end (L{own_path}): a request to
        the vault itself, which RFC 9112 3.2.2 has a server answer as that
        path (``curl -x VAULT http://VAULT/-/status``, apt with
        C{Acquire::http::Proxy} and a source on the vault); else None.
        """
        return own_path(target, self.getHost(), self.isSecure())

    def connectionMade(self) -> None:
        limits = self.limits
        # Twisted's own limits stay out of the way of ours (theirs answer a bare 400, or nothing)
        self.MAX_LENGTH = max(limits.max_request_line, limits.max_header_size)
        self.maxHeaders = limits.max_headers + 1
        self.totalHeadersSize = limits.max_request_line + limits.max_header_size + 4
        super().connectionMade()
        self._start_head_timer()

    def dataReceived(self, data: bytes) -> None:
        # (Twisted replays buffered bytes through here too: see requestDone)
        if self._refused:
            return
        if not self._replaying:
            self.arrived = self.site.monotonic()
            if data:
                # (the reads whose bytes were all parsed, a request body's, are forgotten first)
                self._arrival(self._received - len(self._buffer) - sum(map(len, self._dataBuffer)))
                self._reads.append((self._received, self.arrived))
                self._received += len(data)
                if self._quickack and self._transferDecoder is None and not data.endswith(b"\r\n\r\n"):
                    self._ack_now()
        if self._first and data:
            self._first = False
            if data.startswith(TLS_HANDSHAKE):
                self.transport.write(refusal(400, NOT_TLS))  # (dated, as every answer)
                self.transport.loseConnection()
                return
        if data and not self._handlingRequest and self._head_timer is None:
            self._start_head_timer()
        super().dataReceived(data)

    def _ack_now(self) -> None:
        """
        Acknowledge at once what was just read: it ended inside a request's
        head. A client with Nagle's algorithm on (apt is one) that writes a
        request in two pieces holds back the second until the first is
        acknowledged, and the kernel, with nothing to send, delays that
        acknowledgement by 40 ms: each such request waited ~44 ms (measured,
        against nginx too; 1 in ~50 of apt's pipelined requests). With
        C{TCP_QUICKACK} the kernel acknowledges now; it goes back to delaying
        by itself, so this is asked at each such read. Not possible (no such
        option, or not a TCP socket): never asked again on this connection.
        """
        try:
            _tcp_socket(self.transport).setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        except (OSError, AttributeError):
            self._quickack = False

    def rawDataReceived(self, data: bytes) -> None:
        # (while a request is answered, Twisted keeps what follows in
        # _dataBuffer, to parse it once that request is done)
        if self._refused:
            return
        handling = self._handlingRequest
        super().rawDataReceived(data)
        if handling and self._dataBuffer:
            self._look_ahead()

    # -- limits ----------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        limits = self.limits
        if self._lines == 0:
            if line:  # (Twisted eats one empty line before a request line)
                self._lines = 1
                # (every byte read and not yet parsed follows this line: the rest of the read it
                # came in, and what Twisted buffered while it answered the requests before it)
                self.arrived = self._arrival(self._received - len(self._buffer) - len(line) - len(self.delimiter))
                parts = line.split(b" ")
                method, target = (parts[0], parts[1]) if len(parts) == 3 else (b"-", line)
                self._request_line = (method, target)
                if len(line) > limits.max_request_line:
                    self.refuse(414, f"the request line is longer than {limits.max_request_line} bytes")
                    return
                if len(target.partition(b"?")[0]) > limits.max_path_length:
                    self.refuse(414, f"the request path is longer than {limits.max_path_length} bytes")
                    return
                super().lineReceived(line)
                self._parsing = self.requests[-1] if self.requests else None
                return
        else:
            self._lines += 1
            self._head_size += len(line) + 2
            if line and line[:1] not in (b" ", b"\t"):
                self._fields += 1
            if self._fields > limits.max_headers:
                self.refuse(431, f"the request has more than {limits.max_headers} header fields")
                return
            if self._head_size > limits.max_header_size:
                self.refuse(431, f"the request's header fields are larger than {limits.max_header_size} bytes")
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        # (a line longer than any limit allows, still arriving or whole)
        if self._lines == 0:
            self._request_line = (line.partition(b" ")[0][:16] or b"-", line.partition(b" ")[2])
            self.refuse(414, f"the request line is longer than {self.limits.max_request_line} bytes")
        else:
            self.refuse(431, f"the request's header fields are larger than {self.limits.max_header_size} bytes")

    def allHeadersReceived(self) -> None:
        self._lines = self._head_size = self._fields = 0
        limit = self.limits.max_request_body
        if self.length is not None and self.length > limit:  # (before a 100 Continue invites the body)
            self.refuse(413, f"the request body is larger than {limit} bytes")
            return
        hosts = self.requests[-1].requestHeaders.getRawHeaders(b"host", [])
        if len(hosts) > 1 or (not hosts and self._version == b"HTTP/1.1"):
            # (RFC 9112 3.2: an HTTP/1.1 request names its host, and no request names two; an
            # HTTP/1.0 one may name none, as before Host existed)
            self.refuse(400, "an HTTP/1.1 request must have one Host header field" if not hosts
                        else "the request has more than one Host header field")
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._stop_head_timer()
        self._parsing = None
        self._request_line = None
        super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # (Twisted's answer to a malformed head: a status line alone)
        self.refuse(400, "the request is malformed")

    def _start_head_timer(self) -> None:
        self._head_timer = self.callLater(self.limits.client_header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        seconds = self.limits.client_header_timeout
        if self._lines == 0 and not self._buffer:  # (nothing of a request came: no answer to mistake)
            self._refused = True
            _log.debug("closing an idle connection from {peer}: no request within {seconds:g} s",
                       peer=self.client_host, seconds=seconds)
            self.loseConnection()
            return
        self.refuse(408, f"the request did not arrive within {seconds:g} s (client_header_timeout)")

    def refuse(self, status: int, reason: str) -> None:
        """
        Answer C{status} with C{reason} and close the connection (cut after
        C{abortTimeout} if the client does not read the answer); nothing it
        sends afterwards is read. One log line, as for any request.
        """
        if self._refused:
            return
        self._refused = True
        self._stop_head_timer()
        answer = refusal(status, reason)
        self.transport.write(answer)
        self._log_refusal(status, reason, len(answer))
        self.loseConnection()
        self._abort_call = self.callLater(self.abortTimeout, self.transport.abortConnection)

    def _log_refusal(self, status: int, reason: str, sent: int) -> None:
        request = self._parsing
        if request is None:  # (the request line itself was refused: Twisted made no request)
            request = self.requestFactory(self, len(self.requests))
        method, target = self._request_line or (b"-", b"")
        request.method = method[:16]
        # (its userinfo hidden before it is cut: a cut may fall inside it, and hide its "@")
        request.path = logs.without_userinfo(target.partition(b"?")[0])[:LOGGED_TARGET]
        request.code = status
        request.error_reason = reason
        request.sentLength = sent
        if isinstance(request, VaultRequest) and not request._logged:
            request.log_line()

    def connectionLost(self, reason: Any) -> None:
        self._stop_head_timer()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if self.client_host is not None and isinstance(self.site, VaultSite):
            self.site.connection_closed(self.client_host)
            self.client_host = None
        super().connectionLost(reason)

    def requestDone(self, request: Any) -> None:
        # The bytes buffered meanwhile are parsed now, passed to dataReceived;
        # the first request among them is the one answered next.
        if self._ahead:
            self._ahead.pop(0)
        self._replaying = True
        try:
            super().requestDone(request)
        finally:
            self._replaying = False

    def _arrival(self, position: int) -> float | None:
        """
        When the read that held byte C{position} of the connection's bytes
        arrived; reads wholly before it are forgotten (requests are parsed
        in order: no later question is about them).
        """
        reads = self._reads
        while len(reads) > 1 and reads[1][0] <= position:
            reads.popleft()
        return reads[0][1] if reads else self.arrived

    def __init__(self) -> None:
        super().__init__()
        #: For each complete request looked at in the buffer, in order:
        #: whether its download was started ahead (see the module doc).
        self._ahead: list[bool] = []
        #: (position of its first byte among the connection's, when it arrived) of
        #: each read that may hold a request line not parsed yet (L{_arrival}).
        self._reads: deque[tuple[int, float]] = deque()

    def _look_ahead(self) -> None:
        """
        Look at the complete request heads buffered behind the request being
        answered that were not looked at yet, and let the site fetch ahead
        what each plain GET asks for, while fewer than the site's
        C{prefetch_limit} fetched ahead wait for their turn. Stops at a
        request with a body (its end cannot be found without parsing it) and
        at the limit (the rest are looked at as earlier ones are answered).
        """
        limit = getattr(self.site, "prefetch_limit", 0)
        if not limit or not self.persistent:
            return
        buffered = b"".join(self._dataBuffer)
        self._dataBuffer = [buffered]
        start = 0
        for _ in range(len(self._ahead)):  # (heads already looked at)
            start = buffered.find(b"\r\n\r\n", start)
            if start < 0:
                return
            start += 4
        while sum(self._ahead) < limit:
            end = buffered.find(b"\r\n\r\n", start)
            if end < 0:
                return
            target = _plain_get(buffered[start:end])
            if target is False:
                return
            self._ahead.append(target is not None)
            start = end + 4
            if target is not None:
                self.site.prefetch(self.origin_form(target) or target)


def own_path(target: bytes, local: Any, secure: bool) -> bytes | None:
    """
    The path (and query) of C{target} if it is an absolute URI that names
    the address C{local} (the connection's own end: a Twisted address with
    C{host} and C{port}) in the scheme the connection speaks (C{http}, port
    80 unless given; C{https}, 443, when C{secure}); else None.

    Only the address itself matches, as a literal (``127.0.0.1``,
    ``[::1]``; an IPv4 address also as its IPv4-mapped IPv6 form): a name
    that merely resolves to the vault is not looked up, and another port,
    or another address of the same machine, is not the vault's (it stays a
    proxy request, a 403 unless a backend claims it). ``localhost`` matches
    a loopback address too: it names the loopback interface by definition
    (RFC 6761 6.3), it is what ``curl -x localhost:PORT`` users write, and
    nothing is fetched for it either way: it is this connection's own end.
    """
    if not _ABSOLUTE.match(target):
        return None
    try:
        parts = urlsplit(target.decode("ascii"))
        port = parts.port
    except (UnicodeDecodeError, ValueError):
        return None
    scheme = "https" if secure else "http"
    if parts.scheme.lower() != scheme or (port or _DEFAULT_PORTS[scheme]) != getattr(local, "port", None):
        return None
    address = _ip(getattr(local, "host", None) or "")
    if address is None or not parts.hostname:
        return None
    if not (address.is_loopback if parts.hostname == "localhost" else _ip(parts.hostname) == address):
        return None
    return ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode("ascii")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address C{text} is a literal of (an IPv4-mapped IPv6 one as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _tcp_socket(transport: Any) -> socket.socket:
    """
    The socket under C{transport}: its handle, or for TLS (whose handle is
    the TLS connection) the handle of the transport it wraps;
    AttributeError if there is none.
    """
    while not isinstance(handle := transport.getHandle(), socket.socket):
        transport = transport.transport
    return handle


def _plain_get(head: bytes) -> bytes | None | bool:
    """
    What a buffered request head (request line and fields, without the blank
    line that ends it) may be fetched ahead as: the local path of a GET
    (origin form, or absolute form as a proxy request), with no query, Range
    or conditional field; None for any other request without a body; False
    for one that may have a body, or that cannot be read (nothing after it
    is looked at).
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return False
    method, target, _ = parts
    names = set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return False
        name = name.strip().lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return False
        names.add(name)
    if method != b"GET" or b"?" in target or names & _NOT_AHEAD:
        return None
    return target


#: Request fields that make a GET's answer more than "the artifact": those
#: requests are answered as they come, never fetched ahead.
_NOT_AHEAD = frozenset({b"range", b"if-range", b"if-match", b"if-none-match", b"if-modified-since",
                        b"if-unmodified-since", b"authorization", b"proxy-authorization", b"cookie"})


class _Busy(Protocol):
    """
    A connection over C{max_connections_per_client}: answered 503 once its
    request's head is in (closing before reading it would reset the
    connection, and the client might never see the answer), or after
    C{client_header_timeout}; then closed.
    """

    def __init__(self, site: "VaultSite", host: str):
        self.site = site
        self.host = host
        self._head = b""
        self._timer: Any = None

    def connectionMade(self) -> None:
        self._timer = self.site.reactor.callLater(self.site.limits.client_header_timeout, self._answer)

    def dataReceived(self, data: bytes) -> None:
        self._head = (self._head + data)[-4:]
        if b"\r\n\r\n" in self._head:
            self._answer()

    def _answer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.transport.disconnecting:
            return
        limit = self.site.limits.max_connections_per_client
        self.transport.write(refusal(503, f"too many connections from {self.host} (more than {limit})",
                                     (b"Retry-After: 1",)))
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


class VaultSite(Site):
    requestFactory = VaultRequest
    displayTracebacks = False
    #: The clock request durations are measured by (tests replace it).
    monotonic = staticmethod(time.monotonic)
    #: How many pipelined requests per connection may have their download
    #: started ahead of their turn (see the module doc); 0: none.
    prefetch_limit = 10

    def __init__(self, *args: Any, limits: ClientLimits | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        #: Requests begun and not yet ended (a graceful stop waits for them).
        self.active: set[VaultRequest] = set()
        #: L{artifactvault.observe.IRequestObserver}s told of every request that ended.
        self.observers: list[Any] = []
        #: What clients may send and hold.
        self.limits = limits or ClientLimits()
        #: Open connections by client address.
        self.connections: dict[str, int] = {}
        self._capped: set[str] = set()
        #: The L{artifactvault.auth.gate.Gate} that admits clients (None: no auth configured).
        self.gate: Any = None

    #: Plain HTTP/1.1 channels (HTTP/2 needs TLS with ALPN, which we do not offer).
    protocol = VaultChannel

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", None)
        if host is not None:
            held = self.connections.get(host, 0)
            if held >= self.limits.max_connections_per_client:
                if host not in self._capped:  # (once until it is under again: no log flood)
                    self._capped.add(host)
                    _log.warn("client {host} holds {held} connections (max_connections_per_client): "
                              "more are answered 503", host=host, held=held)
                return _Busy(self, host)
            self.connections[host] = held + 1
        channel = super().buildProtocol(addr)
        channel.limits = self.limits
        channel.client_host = host
        return channel

    def connection_closed(self, host: str) -> None:
        """A channel of C{host}'s ended."""
        held = self.connections.get(host, 0) - 1
        if held > 0:
            self.connections[host] = held
        else:
            self.connections.pop(host, None)
        if held < self.limits.max_connections_per_client:
            self._capped.discard(host)

    def route_absolute(self, uri: bytes) -> bytes | None:
        """The local path to answer a proxy request for C{uri} as, if a backend claims it (see L{Root})."""
        route = getattr(self.resource, "route_absolute", None)
        return route(uri) if route is not None else None

    def prefetch(self, target: bytes) -> None:
        """
        Start what a GET of C{target} (a pipelined request's target, origin
        or absolute form) will be answered from, if its backend says that is
        safe (L{artifactvault.root.Root.prefetch}); nothing is answered here.
        """
        if _ABSOLUTE.match(target):
            local = self.route_absolute(target)
            if local is None:
                return
            target = local
        prefetch = getattr(self.resource, "prefetch", None)
        if prefetch is None or not target.startswith(b"/"):
            return
        try:
            prefetch([unquote_to_bytes(seg) for seg in target[1:].split(b"/")], gate=self.gate)
        except Exception:
            _log.failure("fetching ahead for {target} failed", target=logs.request_path(target))

    def log(self, request: Request) -> None:
        if isinstance(request, VaultRequest) and not request._logged:
            request.log_line()
