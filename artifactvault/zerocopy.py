# -*- test-case-name: tests.test_zerocopy -*-
"""
Zero-copy sends of file bytes with ``sendfile(2)``.

Twisted copies every byte it sends through its transport buffer, 128 KiB per
reactor turn. For a cached file on a plain TCP connection we can do what
nginx does: when the transport has nothing buffered, hand the kernel a file
range to send straight from the page cache, as much as the socket takes. When
the socket is full, the caller writes one ordinary chunk through the
transport; its drain resumes the producer, which then sends from the file
again. TLS and other transports never take this path, and neither does a
body Twisted frames (chunked) or drops (HEAD, 304): there, raw file bytes
on the socket would corrupt the response.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.web.http import NO_BODY_CODES

#: The most one sendfile call is asked to send (the kernel sends what fits).
MAX_SEND = 16 * 1024 * 1024


def direct_transport(request: Any) -> Any:
    """The plain TCP transport under C{request}, or None where bytes must go through Twisted."""
    if not hasattr(os, "sendfile"):
        return None
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if type(transport) is not tcp.Server or ISSLTransport.providedBy(transport) \
            or getattr(transport, "TLS", False):
        return None
    if not all(hasattr(transport, a) for a in ("dataBuffer", "offset", "_tempDataLen", "socket")):
        return None
    return transport


def raw_body(request: Any) -> bool:
    """
    The response's body goes on the wire as it is: its headers are out, and
    Twisted neither frames it (``Transfer-Encoding: chunked``, used for an
    HTTP/1.1 answer without Content-Length) nor drops it (HEAD, 204, 304).
    Only then may file bytes bypass C{request.write}.
    """
    return bool(request.startedWriting) and not request.chunked and request.method != b"HEAD" \
        and request.code not in NO_BODY_CODES


def drained(transport: Any) -> bool:
    """Nothing of ours waits in the transport's buffer (so file bytes may go out directly)."""
    return (transport.connected and not transport.disconnecting
            and transport.offset == len(transport.dataBuffer) and not transport._tempDataLen)


def send(transport: Any, fd: int, offset: int, count: int) -> int | None:
    """
    Send up to C{count} bytes of C{fd} from C{offset}; how many went (0 when
    the socket is full), or None if the connection is broken.
    """
    try:
        return os.sendfile(transport.socket.fileno(), fd, offset, min(count, MAX_SEND))
    except BlockingIOError:
        return 0
    except InterruptedError:
        return 0
    except OSError:
        return None
