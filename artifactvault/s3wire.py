# -*- test-case-name: tests.test_s3store -*-
"""
S3 on the wire, for the S3 store (L{artifactvault.cache.s3}).

Why this shape (measured, docs/benchmarks.md): every request that carries
bytes or must not wait — GET (ranged), PUT, multipart parts, HEAD, DELETE,
conditional PUTs of leases — goes through treq on the reactor, to a URL
presigned by botocore. Signing is a local computation (no network, no
thread): an HMAC chain per request. The bytes then stream in both
directions with Twisted's own flow control: a part is read from the spool
file a chunk at a time as the socket takes it, a hit is written to the
client as it arrives and the S3 connection is paused when the client's is
full. No thread holds a body and no body is ever whole in memory. What is
left to C{boto3}, in the store's thread pool, is what is neither urgent nor
large but tedious on the wire: listing (for the janitor and stats) and the
start-up check of the bucket.

Errors are L{StoreUnavailable} with the S3 error code and no secret (a
presigned URL carries a signature: URLs are never logged whole).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from artifactvault import logs
from artifactvault.cache.interface import StoreUnavailable
from artifactvault.httpcache import loose_date
from artifactvault.upstream import read_larger

_log = Logger(observer=logs.observer)

#: A presigned URL is used at once: this is only a bound.
PRESIGN_SECONDS = 900
#: Bytes read from the spool file per write of a part.
READ_CHUNK = 1024 * 1024
#: Seconds an S3 request may go without an answer, or a body without a byte.
TIMEOUT = 30.0
#: Error bodies and small objects are read up to this.
SMALL_LIMIT = 16 * 1024 * 1024

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class PreconditionFailed(StoreUnavailable):
    """A conditional request's condition did not hold (412): a lease someone else has."""


def _signer(endpoint_url: str, region: str, access_key: str | None, secret_key: str | None,
            session_profile: str | None = None) -> Any:
    """A botocore S3 client used for presigning (and, in threads, for listing)."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    if session_profile:
        session.set_config_variable("profile", session_profile)
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                    retries={"max_attempts": 2}, connect_timeout=10, read_timeout=60,
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    return session.create_client("s3", endpoint_url=endpoint_url, region_name=region,
                                 aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=config)


class S3Wire:
    """
    One bucket, through treq (bytes, conditions) and botocore (signing,
    and listing in a thread).

    @ivar quoted_if_match: whether C{If-Match} takes the ETag quoted, as
        RFC 9110 says (AWS), or bare (Ceph RGW Pacific compares it bare);
        learnt by L{artifactvault.cache.s3.S3Store.probe}.
    """

    def __init__(self, http: Any, reactor: Any, run_blocking: Any, endpoint_url: str, bucket: str,
                 region: str, access_key: str | None, secret_key: str | None, profile: str | None = None):
        self.http = http
        self.reactor = reactor
        self.run_blocking = run_blocking
        self.bucket = bucket
        self.endpoint = endpoint_url.rstrip("/")
        self.botocore = _signer(endpoint_url, region, access_key, secret_key, profile)
        self.quoted_if_match = True

    # -- signing ---------------------------------------------------------------

    def url(self, operation: str, key: str | None = None, **params: Any) -> str:
        """A presigned URL for C{operation} (a botocore operation name) on C{key}."""
        p: dict[str, Any] = {"Bucket": self.bucket, **params}
        if key is not None:
            p["Key"] = key
        return self.botocore.generate_presigned_url(operation, Params=p, ExpiresIn=PRESIGN_SECONDS)

    # -- requests ----------------------------------------------------------------

    async def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                      data: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        """
        One request, its response unread (a status in C{ok}); else
        L{StoreUnavailable} (L{PreconditionFailed} for a 412) with S3's error code.
        """
        try:
            response = await self.http.request(
                method, url, headers={k: [v] for k, v in (headers or {}).items()}, data=data,
                unbuffered=True, timeout=TIMEOUT, allow_redirects=False, reactor=self.reactor)
        except Exception as e:  # refused, reset, timed out: the store is not there
            raise StoreUnavailable(f"S3 {method} {_path(url)}: {_describe(e)}") from None
        if response.code in ok:
            return response
        body = await self.read(response, 64 * 1024, strict=False)
        code = _error_code(body) or str(response.code)
        cls = PreconditionFailed if response.code == 412 else StoreUnavailable
        raise cls(f"S3 {method} {_path(url)}: {response.code} {code}")

    async def read(self, response: Any, limit: int = SMALL_LIMIT, strict: bool = True) -> bytes:
        """A small body whole (at most C{limit} bytes, within L{TIMEOUT} of silence)."""
        done: Deferred = Deferred()
        response.deliverBody(_Collector(done, limit, self.reactor))
        try:
            return await done
        except StoreUnavailable:
            if strict:
                raise
            return b""

    async def get_small(self, key: str, limit: int = SMALL_LIMIT) -> tuple[bytes, Any] | None:
        """An object's bytes and response, or None if there is none."""
        response = await self.request("GET", self.url("get_object", key), ok=(200, 404))
        if response.code == 404:
            await self.read(response, 64 * 1024, strict=False)
            return None
        return await self.read(response, limit), response

    async def head(self, key: str) -> Any | None:
        """An object's HEAD response (ETag, Last-Modified, the server's Date), or None."""
        response = await self.request("HEAD", self.url("head_object", key), ok=(200, 404))
        _drain(response)
        return None if response.code == 404 else response

    async def put(self, key: str, data: bytes | IBodyProducer, headers: dict[str, str] | None = None) -> Any:
        """PUT an object (conditions in C{headers}); its response (ETag, Date)."""
        response = await self.request("PUT", self.url("put_object", key), headers, data)
        _drain(response)
        return response

    async def delete(self, key: str) -> None:
        response = await self.request("DELETE", self.url("delete_object", key), ok=(200, 204, 404))
        _drain(response)

    def if_match(self, etag: str) -> str:
        """The C{If-Match} value for C{etag}, as this server compares it."""
        bare = etag.strip('"')
        return f'"{bare}"' if self.quoted_if_match else bare

    # -- multipart ------------------------------------------------------------------

    async def create_multipart(self, key: str) -> str:
        response = await self.request("POST", self.url("create_multipart_upload", key))
        body = await self.read(response, 64 * 1024)
        upload_id = _xml_text(body, "UploadId")
        if not upload_id:
            raise StoreUnavailable("S3 CreateMultipartUpload: no UploadId in the answer")
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, fd: int, offset: int,
                          length: int) -> str:
        """Upload bytes C{offset}..+C{length} of C{fd} as part C{number}; its ETag."""
        url = self.url("upload_part", key, UploadId=upload_id, PartNumber=number)
        response = await self.request("PUT", url, data=FileRange(fd, offset, length, self.reactor))
        _drain(response)
        etag = _header(response, b"etag")
        if not etag:
            raise StoreUnavailable(f"S3 UploadPart {number}: no ETag in the answer")
        return etag

    async def put_file(self, key: str, fd: int, length: int) -> None:
        """PUT the first C{length} bytes of C{fd} as one object (a file smaller than a part)."""
        await self.put(key, FileRange(fd, 0, length, self.reactor))

    async def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                        for n, etag in enumerate(etags, 1))
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        response = await self.request("POST", self.url("complete_multipart_upload", key, UploadId=upload_id),
                                      {"Content-Type": "application/xml"}, body)
        answer = await self.read(response, 64 * 1024)
        if _error_code(answer):  # (S3 may answer 200 and then an error, after a long assembly)
            raise StoreUnavailable(f"S3 CompleteMultipartUpload: {_error_code(answer)}")

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        response = await self.request("DELETE", self.url("abort_multipart_upload", key, UploadId=upload_id),
                                      ok=(200, 204, 404))
        _drain(response)

    # -- in the thread pool: listing ---------------------------------------------------

    def list(self, prefix: str) -> Deferred:
        """Fires with [(key, size, last modified as a timestamp)] of every object under C{prefix}."""
        return self.run_blocking(self._list, prefix)

    def _list(self, prefix: str) -> list[tuple[str, int, float]]:
        out = []
        try:
            for page in self.botocore.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                out += [(o["Key"], o["Size"], o["LastModified"].timestamp()) for o in page.get("Contents", [])]
        except Exception as e:
            raise StoreUnavailable(f"S3 ListObjectsV2: {_describe(e)}") from None
        return out

    def list_uploads(self, prefix: str) -> Deferred:
        """Fires with [(key, upload id, initiated as a timestamp)] of the multipart uploads under way."""
        return self.run_blocking(self._list_uploads, prefix)

    def _list_uploads(self, prefix: str) -> list[tuple[str, str, float]]:
        out = []
        try:
            for page in self.botocore.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=prefix):
                out += [(u["Key"], u["UploadId"], u["Initiated"].timestamp()) for u in page.get("Uploads", [])]
        except Exception as e:
            raise StoreUnavailable(f"S3 ListMultipartUploads: {_describe(e)}") from None
        return out

    def check_bucket(self, probe_key: str) -> None:
        """
        At start, before the reactor runs (blocking): the bucket exists and
        takes a write and a delete; else L{StoreUnavailable} saying which.
        """
        try:
            self.botocore.head_bucket(Bucket=self.bucket)
        except Exception as e:
            raise StoreUnavailable(f"bucket {self.bucket} at {self.endpoint}: {_describe(e)}") from None
        try:
            self.botocore.put_object(Bucket=self.bucket, Key=probe_key, Body=b"probe")
            self.botocore.delete_object(Bucket=self.bucket, Key=probe_key)
        except Exception as e:
            raise StoreUnavailable(f"bucket {self.bucket} at {self.endpoint} cannot be written: "
                                   f"{_describe(e)}") from None


def server_time(response: Any) -> float | None:
    """The storage server's clock, from a response's C{Date}."""
    return loose_date(_header(response, b"date"))


def last_modified(response: Any) -> float | None:
    return loose_date(_header(response, b"last-modified"))


def etag_of(response: Any) -> str | None:
    return _header(response, b"etag")


def _header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _path(url: str) -> str:
    """A URL without its query (where the signature is): safe to log."""
    return urlsplit(url).path


def _describe(e: BaseException) -> str:
    """An exception in words, without a presigned URL's signature."""
    text = getattr(e, "response", None) and e.response.get("Error", {}).get("Code")  # type: ignore[attr-defined]
    if text:
        return str(text)
    words = str(e) or type(e).__name__
    return words.split("?", 1)[0][:200]


def _error_code(body: bytes) -> str | None:
    return _xml_text(body, "Code") if body.lstrip().startswith(b"<") else None


def _xml_text(body: bytes, tag: str) -> str | None:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag in (tag, _NS + tag):
            return element.text
    return None


def _drain(response: Any) -> None:
    """Read and drop what is left of a response (an answer's empty or small body)."""
    response.deliverBody(_Collector(Deferred(), 64 * 1024, None))


class _Collector(Protocol):
    """Collects a small body; StoreUnavailable when it is larger than C{limit} or cut."""

    def __init__(self, done: Deferred, limit: int, reactor: Any):
        self.done = done
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.timer = reactor.callLater(TIMEOUT, self._idle) if reactor is not None else None

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.timer is not None and self.timer.active():
            self.timer.reset(TIMEOUT)
        if self.size > self.limit:
            self._end(StoreUnavailable(f"S3 answer larger than {self.limit} bytes"))
            self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if reason is not None and reason.check(ResponseDone):
            self._end(None)
        else:
            self._end(StoreUnavailable("S3 answer cut short"))

    def _idle(self) -> None:
        self.timer = None
        self._end(StoreUnavailable(f"S3 answer stalled for {TIMEOUT:g} s"))
        if self.transport is not None:
            self.transport.stopProducing()

    def _end(self, error: Exception | None) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.done.called:
            return
        if error is None:
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(error)


@implementer(IBodyProducer)
class FileRange:
    """
    Bytes C{offset}..+C{length} of a file as a request body, read a chunk at
    a time as the connection takes them (a part of a download: the spool
    file's bytes are final where it reads).
    """

    def __init__(self, fd: int, offset: int, length: int, reactor: Any):
        self.fd = fd
        self.offset = offset
        self.end = offset + length
        self.length = length
        self.reactor = reactor
        self.paused = False
        self.stopped = False
        self.consumer: Any = None
        self.done: Deferred | None = None

    def startProducing(self, consumer: Any) -> Deferred:
        self.consumer = consumer
        self.done = Deferred()
        self._pump()
        return self.done

    def _pump(self) -> None:
        # One chunk per reactor turn: a part of 16 MiB must not hold the
        # reactor for its whole write.
        if self.paused or self.stopped or self.done is None or self.done.called:
            return
        if self.offset >= self.end:
            self.done.callback(None)
            return
        try:
            data = os.pread(self.fd, min(READ_CHUNK, self.end - self.offset), self.offset)
        except OSError as e:
            self.done.errback(StoreUnavailable(f"cannot read the download to upload it: {e.strerror}"))
            return
        if not data:
            self.done.errback(StoreUnavailable("the download is shorter than its part"))
            return
        self.offset += len(data)
        self.consumer.write(data)
        self.reactor.callLater(0, self._pump)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self._pump()

    def stopProducing(self) -> None:
        self.stopped = True


class RangeReader(Protocol):
    """
    A ranged GET's body written to a consumer as it arrives: the consumer's
    pauses pause the S3 connection (a push producer registered on it), so a
    slow client makes the vault hold no more than a socket buffer. Exactly
    C{length} bytes, or L{StoreUnavailable}.
    """

    def __init__(self, consumer: Any, length: int, reactor: Any):
        self.consumer = consumer
        self.length = length
        self.got = 0
        self.reactor = reactor
        self.done: Deferred = Deferred()
        self.timer: Any = None
        self.producer = _ReaderProducer(self)

    def connectionMade(self) -> None:
        read_larger(self, self.length)
        self.consumer.registerProducer(self.producer, True)
        self.timer = self.reactor.callLater(TIMEOUT, self._idle)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        if self.timer is not None and self.timer.active():
            self.timer.reset(TIMEOUT)
        self.got += len(data)
        if self.got > self.length:
            self._end(StoreUnavailable(f"S3 sent more than the {self.length} bytes asked for"))
            self.transport.stopProducing()
            return
        self.consumer.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.got == self.length and reason is not None and reason.check(ResponseDone):
            self._end(None)
        else:
            self._end(StoreUnavailable(f"S3 answer cut after {self.got} of {self.length} bytes"))

    def _idle(self) -> None:
        self.timer = None
        self._end(StoreUnavailable(f"S3 sent nothing for {TIMEOUT:g} s"))
        if self.transport is not None:
            self.transport.stopProducing()

    def stop(self) -> None:
        """The reader is not wanted any more (the client left)."""
        if self.transport is not None and not self.done.called:
            self.transport.stopProducing()
        self._end(StoreUnavailable("stopped"), quiet=True)

    def _end(self, error: Exception | None, quiet: bool = False) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.done.called:
            return
        self.consumer.unregisterProducer()
        if error is None:
            self.done.callback(None)
        elif quiet:
            self.done.callback(None)
        else:
            self.done.errback(error)


@implementer(IPushProducer)
class _ReaderProducer:
    """What the consumer pauses and resumes: the S3 connection under a L{RangeReader}."""

    def __init__(self, reader: RangeReader):
        self.reader = reader

    def pauseProducing(self) -> None:
        if self.reader.transport is not None:
            self.reader.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.reader.transport is not None:
            self.reader.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.reader.stop()
