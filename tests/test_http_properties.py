# -*- test-case-name: tests.test_http_properties -*-
"""
Property tests of HTTP through a real socket: arbitrary C{Range},
C{If-Range}, C{If-None-Match}, C{If-Modified-Since} and C{Accept} headers
(hypothesis generates them: valid forms, several ranges, numbers of up to
5000 digits, whitespace, other units, weak and strong entity tags, the real
validators, dates in three formats, garbage) sent to the real daemon, at
hits and misses of the http backend (nginx, and a scripted upstream that
sends chunked bodies or no length at all), the PyPI backend (files and
pages) and the registry backend (blobs).

Every answer, read off the socket by L{tests.wire} with nothing forgiven:

 - is one well-framed HTTP/1.1 message (Content-Length or chunked framing
   with its last chunk; no body on HEAD and 304), arrives within
   L{TIMEOUT}, and leaves the connection usable: a second request on it gets
   its own answer (no stray bytes after the body);
 - is never a 5xx: these upstreams work (but a body that only the
   connection's close ends may be refused with a clean 502: see that test);
 - is one of the outcomes L{tests.rfc9110} allows for those headers (its
   docstring says what is allowed and why): a 200 carries exactly the
   artifact and no Content-Range, a 206 exactly the bytes its
   C{Content-Range: bytes a-b/size} names (of the right size, and the very
   range asked for when the header was one valid range), a 416 says
   C{bytes */size}, a 304 comes only when the validators match; on a hit,
   the validators are the entry's own;
 - afterwards, every descriptor the daemon opened for it is closed again
   (polled with a deadline; idle pooled upstream connections excepted).

A last property: an upstream whose bytes do not match their digest (a
registry blob, a PyPI file) never gets a complete 200 or 206 to the client,
whatever the headers: a 502 (or a 416 or 304, which give no bytes away), or a
connection cut before the end.

Misses are fresh every time: a new hard link in nginx's directory, a new
scripted path, a new file in pypiserver's package directory (its page is
fetched anew each time: C{index_ttl: 0}), a new blob pushed to the registry.
The runs are repeatable (C{derandomize}) and bounded (C{max_examples}).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Callable

from hypothesis import given, note
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests import rfc9110, support
from tests.headers import bounded, garbage, methods, range_values, request_headers, resolve
from tests.fakeupstream import FakeUpstream, Script
from tests.wire import ConnectionCut, FramingError, Response, Wire

#: No answer (or no end of one) within this many seconds is a failure.
TIMEOUT = 5.0
#: What the PyPI backend can answer with (from its configuration of formats).
PAGE_TYPES = ("application/vnd.pypi.simple.v1+json", "application/vnd.pypi.simple.v1+html", "text/html")


# -- what is asked for -------------------------------------------------------------------------

@dataclass
class Target:
    """One artifact as the test knows it: where to ask, its exact bytes, its validators."""
    path: str
    body: bytes = field(repr=False)
    miss: bool
    #: Hits: the validators the daemon answers with (checked). Misses: the upstream's (a hint).
    etag: str | None = None
    last_modified: str | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def known(self) -> bool:
        return not self.miss

    def close(self) -> None:
        for f in self.cleanup:
            f()


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def fresh_bytes(size: int) -> bytes:
    """Random bytes no other example has (a content-addressed miss must be a miss), at least 16."""
    return uuid.uuid4().bytes + os.urandom(size - 16)


def _upstream_head(url: str) -> dict[str, str]:
    status, headers, _ = support.request("HEAD", url)
    assert status == 200, (url, status)
    return headers


class _Shared:
    """The daemon and its upstreams for the whole run (trial has no setUpClass), with hits made ready."""

    def __init__(self) -> None:
        self.files = support.upstream_url("files")
        self.pypi = support.upstream_url("pypi")
        self.reg = support.upstream_url("reg")
        self.fake = FakeUpstream()
        self.liar = FakeUpstream()
        self.liar_files: dict[str, str] = {}
        self.lock = threading.Lock()
        self.daemon = support.Daemon([
            {"type": "http", "config": {"prefix": "/files/", "base_url": self.files}},
            {"type": "http", "config": {"prefix": "/fake/", "base_url": self.fake.base,
                                        "timeout": 5, "idle_timeout": 5}},
            {"type": "pypi", "config": {"prefix": "/pypi/", "index_url": self.pypi + "/simple/",
                                        "index_ttl": 0}},
            {"type": "registry", "config": {"prefix": "/reg/", "registry_url": self.reg}},
            {"type": "registry", "config": {"prefix": "/liar/", "registry_url": self.liar.base,
                                            "timeout": 5, "idle_timeout": 5}},
            {"type": "pypi", "config": {"prefix": "/liarpypi/", "index_url": self.liar.base + "/simple/",
                                        "index_ttl": 0, "timeout": 5, "idle_timeout": 5}},
        ])
        try:
            self.daemon.start()
            self.make_hits()
        except BaseException:
            self.close()  # (shared_fixture registers close only once this returns)
            raise

    def make_hits(self) -> None:
        """The artifacts every test has as hits (or as misses, where the daemon will not store them)."""
        self.www = os.path.join(support.upstream_dir("files"), "www")
        self.packages = os.path.join(support.upstream_dir("pypi"), "packages")
        self.file_hits = self.hits([(f"/files/{name}", read_file(os.path.join(self.www, name)))
                                    for name in ("small.bin", "medium.bin")])
        self.fake_hits = {kind: self.hits([self.fake_artifact(kind, size, validators)[:2]
                                           for size, validators in ((5000, True), (300_000, False), (1, True))])
                          for kind in ("chunked", "close_delimited")}
        self.pypi_hits = self.hits([self.pypi_file(name) for name in sorted(os.listdir(self.packages))
                                    if name.endswith((".whl", ".tar.gz"))])
        self.blob_hits = self.hits([self.push_blob(os.urandom(size))[:2] for size in (1, 70_000, 400_000)])
        for target in self.file_hits + self.pypi_hits + self.blob_hits:
            assert not target.miss, f"{target.path} from a real upstream never became a hit"

    def close(self) -> None:
        self.daemon.cleanup()
        self.fake.close()
        self.liar.close()

    def hits(self, artifacts: list[tuple[str, bytes]], timeout: float = 10.0) -> list[Target]:
        """
        Fetch each artifact once (however the answer looks), wait for its
        entry and note the validators it is served with. One that never
        becomes a hit (the daemon refused to store it) stays a miss: the
        properties hold for it all the same.
        """
        for path, _ in artifacts:
            try:
                with Wire(self.daemon.port, TIMEOUT) as wire:
                    wire.exchange("GET", path, {})
            except (FramingError, OSError):
                pass  # the property tests say what is wrong with that; here we only want the entry
        deadline = time.monotonic() + timeout
        targets = []
        for path, body in artifacts:
            while True:
                _, headers, _ = support.request("HEAD", self.daemon.url(path))
                # (a download that is complete but not yet committed is a hit too, with the
                # upstream's validators; a committed entry always has both of its own)
                if headers.get("x-cache") == "HIT" and "etag" in headers and "last-modified" in headers:
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            targets.append(Target(path, body, miss=headers.get("x-cache") != "HIT", etag=headers.get("etag"),
                                  last_modified=headers.get("last-modified")))
        return targets

    # -- new artifacts (misses) --------------------------------------------------------

    def fake_artifact(self, kind: str, size: int, validators: bool) -> tuple[str, bytes, dict[str, str]]:
        body = os.urandom(size)
        path = f"/{kind}/{uuid.uuid4().hex[:12]}.bin"
        headers = {}
        if validators:
            headers = {"ETag": f'"{uuid.uuid4().hex[:16]}"',
                       "Last-Modified": formatdate(time.time() - 7200, usegmt=True)}
        self.fake.scripts[path] = Script(body=body, headers=headers, chunk=16384, **{kind: True})
        return "/fake" + path, body, headers

    def pypi_file(self, name: str) -> tuple[str, bytes]:
        """The daemon's path for a file of pypiserver's package directory."""
        body = read_file(os.path.join(self.packages, name))
        project = re.sub(r"[-_.]+", "-", name.split("-")[0]).lower()
        return f"/pypi/+f/{project}/{hashlib.sha256(body).hexdigest()}/{name}", body

    def push_blob(self, body: bytes) -> tuple[str, bytes, str]:
        """Push a blob to the registry (monolithic upload); the daemon's path for it."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        port = int(self.reg.rpartition(":")[2])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/v2/props/blobs/blobs/uploads/")
            response = conn.getresponse()
            response.read()
            assert response.status == 202, response.status
            location = response.getheader("Location")
            target = location[location.index("/v2/"):] if "://" in location else location
            conn.request("PUT", f"{target}&digest={digest}", body=body,
                         headers={"Content-Type": "application/octet-stream"})
            response = conn.getresponse()
            response.read()
            assert response.status == 201, response.status
        finally:
            conn.close()
        return f"/v2/reg/props/blobs/blobs/{digest}", body, digest


def shared() -> _Shared:
    return support.shared_fixture(_Shared)


# -- the checks ------------------------------------------------------------------------------

def _mismatch(expected: bytes, got: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    return f"got {len(got)} bytes, expected {len(expected)}; they differ from byte {at}"


def outcome_of(method: str, response: Response, body: bytes) -> Any:
    """What C{response} is, as an L{rfc9110} outcome, after checking it is right about itself."""
    size = len(body)
    status = response.status
    if status == 304:
        return rfc9110.NOT_MODIFIED
    if status == 200:
        assert response.header("content-range") is None, \
            f"a 200 with Content-Range {response.header('content-range')}"
        if method == "GET":
            assert response.body == body, f"200 body is not the artifact: {_mismatch(body, response.body)}"
        else:
            length = response.header("content-length")
            assert length is None or length == str(size), f"HEAD Content-Length {length}, artifact {size}"
        return rfc9110.FULL
    if status == 206:
        content_range = response.header("content-range") or ""
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range)
        assert m, f"206 with Content-Range {content_range!r}"
        first, last, total = map(int, m.groups())
        assert total == size and first <= last < size, f"206 {content_range!r} for an artifact of {size} bytes"
        if method == "GET":
            expected = body[first:last + 1]
            assert response.body == expected, f"206 body is not bytes {first}-{last}: " \
                                              f"{_mismatch(expected, response.body)}"
        return ("206", first, last)
    if status == 416:
        content_range = response.header("content-range")
        assert content_range == f"bytes */{size}", f"416 with Content-Range {content_range!r}, size {size}"
        return rfc9110.UNSATISFIABLE
    raise AssertionError(f"unexpected status {status}")


def check_answer(method: str, headers: dict[str, str], response: Response, body: bytes,
                 known: tuple[str | None, str | None] | None = None, ranges: bool = True) -> None:
    """C{response} is an answer RFC 9110 allows (see L{tests.rfc9110}) for C{body}."""
    etag, modified = response.header("etag"), response.header("last-modified")
    if known is not None and response.status in (200, 206, 304, 416):
        assert (etag, modified) == known, f"validators {(etag, modified)} are not the entry's {known}"
    allowed = rfc9110.allowed_outcomes(method, headers, etag, modified, len(body), time.time())
    if not ranges and allowed != {rfc9110.NOT_MODIFIED}:
        allowed.add(rfc9110.FULL)  # a resource that does not do ranges may ignore Range (RFC 9110 §14.2)
    outcome = outcome_of(method, response, body)
    if isinstance(outcome, tuple) and outcome not in allowed and rfc9110.ANY_PARTIAL in allowed:
        outcome = rfc9110.ANY_PARTIAL
    assert outcome in allowed, f"answered {outcome}, allowed: {sorted(map(str, allowed))}"


class PropertyTests(SynchronousTestCase):
    """Arbitrary conditional and Range headers at hits and misses of every backend, over a real socket."""

    def setUp(self) -> None:
        self.shared = shared()
        self.daemon = self.shared.daemon

    def exchange(self, target: Target, method: str, headers: dict[str, str],
                 gateway_errors: bool = False) -> tuple[Wire, Response]:
        """One request on a new connection; a 5xx fails (C{gateway_errors}: but a 502 or 504)."""
        note(f"{method} {target.path} ({'miss' if target.miss else 'hit'}, {len(target.body)} bytes) "
             f"{headers!r}")
        wire = Wire(self.daemon.port, TIMEOUT)
        try:
            response = wire.exchange(method, target.path, headers)
        except BaseException:
            wire.close()
            raise
        note(f"answer: {response.describe()}")
        if response.status >= 500 and not (gateway_errors and response.status in (502, 504)):
            wire.close()
            log = self.daemon.log()
            tail = log[log.rfind("Traceback") - 200:] if "Traceback" in log else log[-600:]
            raise AssertionError(f"{response.status}: {response.body[:200]!r}\n{tail[-1500:]}")
        return wire, response

    def artifact_property(self, target: Target, method: str, generated: dict[str, Any],
                          refusable: bool = False) -> None:
        """
        The properties of the module docstring for one request at C{target};
        C{refusable}: a clean 502 (before any byte) is an answer too.
        """
        headers = {k: resolve(v, target.etag, target.last_modified) for k, v in generated.items()}
        before = support.descriptors(self.daemon.proc.pid)
        wire, response = self.exchange(target, method, headers, gateway_errors=refusable)
        with wire:
            if response.status != 502:
                check_answer(method, headers, response, target.body,
                             (target.etag, target.last_modified) if target.known else None)
            follow_up = wire.still_usable(response)
            assert follow_up is None or follow_up.status == 200, follow_up
        support.wait_descriptors_released(self.daemon, before)

    def example(self, data: Any, hits: list[Target], make_miss: Callable[[Any], Target],
                refusable: bool = False) -> None:
        """One example: a hit or a new miss, a method, headers; the artifact property for them."""
        target = make_miss(data) if data.draw(st.booleans(), label="miss") else \
            data.draw(st.sampled_from(hits), label="hit")
        try:
            self.artifact_property(target, data.draw(methods, label="method"),
                                   data.draw(request_headers(len(target.body)), label="headers"), refusable)
        finally:
            target.close()

    # -- http backend -------------------------------------------------------------------

    def files_miss(self, data: Any) -> Target:
        source = data.draw(st.sampled_from(["small.bin", "medium.bin"]), label="source")
        name, _ = support.new_upstream_file(source)
        upstream = _upstream_head(f"{self.shared.files}/{name}")
        return Target(f"/files/{name}", read_file(os.path.join(self.shared.www, name)), miss=True,
                      etag=upstream.get("etag"), last_modified=upstream.get("last-modified"),
                      cleanup=[lambda: support.drop_upstream_file(name)])

    @bounded(100)
    @given(data=st.data())
    def test_http_backend_nginx(self, data: Any) -> None:
        """Hits and misses (small and 10 MiB files) of the http backend in front of nginx."""
        self.example(data, self.shared.file_hits, self.files_miss)

    def fake_miss(self, kind: str) -> Callable[[Any], Target]:
        def make(data: Any) -> Target:
            size = data.draw(st.one_of(st.sampled_from([1, 65535, 65536, 65537, 262144, 1_000_000]),
                                       st.integers(1, 300_000)), label="size")
            path, body, headers = self.shared.fake_artifact(kind, size, data.draw(st.booleans(), label="validators"))
            return Target(path, body, miss=True, etag=headers.get("ETag"), last_modified=headers.get("Last-Modified"),
                          cleanup=[lambda: self.shared.fake.scripts.pop(path[len("/fake"):], None)])
        return make

    @bounded(50)
    @given(data=st.data())
    def test_http_backend_chunked_upstream(self, data: Any) -> None:
        """Hits and misses of the http backend whose upstream sends Transfer-Encoding: chunked, no Content-Length."""
        self.example(data, self.shared.fake_hits["chunked"], self.fake_miss("chunked"))

    @bounded(40)
    @given(data=st.data())
    def test_http_backend_upstream_without_length(self, data: Any) -> None:
        """
        Hits and misses of the http backend whose upstream ends its bodies by
        closing (no length at all; RFC 9112 §6.3 allows it). Such a body's
        end cannot be told from a cut connection, so refusing it is a
        defensible policy: a clean 502 with its reason is accepted. What is
        not: a 200 whose connection is then reset, which a client cannot tell
        from a network failure (and retries forever).
        """
        self.example(data, self.shared.fake_hits["close_delimited"], self.fake_miss("close_delimited"),
                     refusable=True)

    # -- PyPI backend -------------------------------------------------------------------

    def pypi_miss(self, data: Any) -> Target:
        """A new file of project propsdemo in pypiserver's directory: a new sha256, so a new key."""
        size = data.draw(st.one_of(st.sampled_from([16, 65536, 65537]), st.integers(16, 300_000)), label="size")
        body = fresh_bytes(size)
        name = f"propsdemo-0.{uuid.uuid4().int % 10 ** 12}-py3-none-any.whl"
        path = os.path.join(self.shared.packages, name)
        with open(path, "wb") as f:
            f.write(body)
        upstream = _upstream_head(f"{self.shared.pypi}/packages/{name}")
        return Target(f"/pypi/+f/propsdemo/{hashlib.sha256(body).hexdigest()}/{name}", body, miss=True,
                      etag=upstream.get("etag"), last_modified=upstream.get("last-modified"),
                      cleanup=[lambda: os.unlink(path)])

    @bounded(60)
    @given(data=st.data())
    def test_pypi_files(self, data: Any) -> None:
        """Hits (pypiserver's wheels and sdist) and misses (new files, checked against their sha256) of PyPI files."""
        self.example(data, self.shared.pypi_hits, self.pypi_miss)

    @bounded(50)
    @given(data=st.data())
    def test_pypi_pages(self, data: Any) -> None:
        """
        Project pages and the project list, fetched anew from pypiserver each
        time (index_ttl 0), in the format the Accept header picks (HTML when
        it picks none: never a 406, as from PyPI); pages may ignore Range.
        The full page to compare with is what the same Accept gets without
        conditions, on the same connection right after.
        """
        path = data.draw(st.sampled_from(["/pypi/", "/pypi/requests/", "/pypi/six/", "/pypi/idna/"]), label="page")
        method = data.draw(methods, label="method")
        generated = data.draw(request_headers(2000), label="headers")
        accept = {"Accept": resolve(generated["Accept"], None, None)} if "Accept" in generated else {}
        etag = support.request("GET", self.daemon.url(path), accept)[1].get("etag")  # (for <etag> values)
        headers = {k: resolve(v, etag, None) for k, v in generated.items()}
        before = support.descriptors(self.daemon.proc.pid)
        page = Target(path, b"", miss=False)
        wire, response = self.exchange(page, method, headers)
        with wire:
            full = wire.still_usable(response, path, accept)
            assert full is not None and full.status == 200, full
            assert (full.header("content-type") or "").split(";")[0] in PAGE_TYPES, full.header("content-type")
            if full.header("content-type").startswith("application/vnd.pypi.simple.v1+json"):
                json.loads(full.body)
            check_answer(method, headers, response, full.body, (full.header("etag"), None), ranges=False)
        support.wait_descriptors_released(self.daemon, before)

    # -- registry backend ----------------------------------------------------------------

    def blob_miss(self, data: Any) -> Target:
        size = data.draw(st.one_of(st.sampled_from([16, 65536, 65537, 1_000_000]), st.integers(16, 300_000)),
                         label="size")
        path, body, digest = self.shared.push_blob(fresh_bytes(size))
        return Target(path, body, miss=True, etag=f'"{digest}"')

    @bounded(60)
    @given(data=st.data())
    def test_registry_blobs(self, data: Any) -> None:
        """Hits and misses (new blobs pushed to the registry, checked against their digest) of registry blobs."""
        self.example(data, self.shared.blob_hits, self.blob_miss)

    # -- an upstream that lies ---------------------------------------------------------------

    def liar_target(self, data: Any) -> tuple[str, bytes]:
        """A fresh artifact whose upstream bytes do not match the digest it is known by."""
        size = data.draw(st.one_of(st.sampled_from([16, 100, 65537, 1_000_000]), st.integers(16, 300_000)),
                         label="size")
        body = fresh_bytes(size)
        claimed = hashlib.sha256(body + b"!").hexdigest()
        liar = self.shared.liar
        if data.draw(st.booleans(), label="pypi"):
            name = f"liar-0.{uuid.uuid4().int % 10 ** 12}-py3-none-any.whl"
            liar.scripts[f"/packages/{name}"] = Script(body=body, chunk=16384)
            with self.shared.lock:
                self.shared.liar_files[name] = claimed
                links = "".join(f'<a href="../../packages/{n}#sha256={h}">{n}</a>\n'
                                for n, h in self.shared.liar_files.items())
                liar.scripts["/simple/liar/"] = Script(body=f"<html><body>\n{links}</body></html>".encode(),
                                                       headers={"Content-Type": "text/html"})
            return f"/liarpypi/+f/liar/{claimed}/{name}", body
        liar.scripts[f"/v2/props/liar/blobs/sha256:{claimed}"] = Script(body=body, chunk=16384)
        return f"/v2/liar/props/liar/blobs/sha256:{claimed}", body

    @bounded(60)
    @given(data=st.data())
    def test_bytes_that_do_not_match_their_digest_are_never_served(self, data: Any) -> None:
        """
        A registry blob or PyPI file whose upstream bytes do not hash to their
        digest: whatever the headers, no GET gets a complete 200 or 206
        (unverified bytes); it gets a 502 (or a 416 or 304, which give no
        bytes away), or its connection is cut before the end of the body.
        The one exception is stated, not hidden: a range passed through to
        an upstream that serves ranges (``X-Cache: PASS``) cannot be checked
        against a digest of the whole file (this scripted upstream ignores
        Range, so its answers become downloads, which are checked).
        """
        path, body = self.liar_target(data)
        method = data.draw(methods, label="method")
        ranged = st.fixed_dictionaries({"Range": range_values(len(body))}, optional={"If-None-Match": garbage})
        headers = {k: resolve(v, None, None) for k, v in
                   data.draw(st.one_of(request_headers(len(body)), ranged), label="headers").items()}
        before = support.descriptors(self.daemon.proc.pid)
        target = Target(path, body, miss=True)
        try:
            wire, response = self.exchange(target, method, headers, gateway_errors=True)
        except ConnectionCut as e:
            note(f"cut: {e}")
        else:
            with wire:
                if method == "GET" and response.header("x-cache") != "PASS":
                    assert response.status in (304, 416, 502, 504), \
                        f"a complete {response.status} of bytes that do not match their digest"
                    assert response.header("content-range") in (None, f"bytes */{len(body)}")
                else:
                    assert response.status in (200, 206, 304, 416, 502, 504), response.status
                wire.still_usable(response)
        support.wait_descriptors_released(self.daemon, before)
