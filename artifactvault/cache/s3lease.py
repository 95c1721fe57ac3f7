# -*- test-case-name: tests.test_s3store -*-
"""
Leases: the cross-node single flight of the S3 store.

A node about to download a key puts ``lease/<keyhash>`` with
C{If-None-Match: *}: one such PUT succeeds. The holder renews it every
quarter of C{lease_ttl} with C{If-Match} (its last ETag) and deletes it after
its commit or abort. A lease not renewed for C{lease_ttl}, by the storage
server's own clock, is stale (its node presumed dead) and taken over with
C{If-Match} on the stale ETag: again one node wins.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from artifactvault import logs
from artifactvault.cache.interface import ILease, StoreUnavailable
from artifactvault.s3wire import PreconditionFailed, etag_of, last_modified, server_time

_log = Logger(observer=logs.observer)


async def acquire(store: Any, key: str) -> ILease:
    """
    Put C{key}'s lease object with C{If-None-Match: *}; if another node
    has it, take it over only if it is stale by the storage server's clock
    (its C{Date} against the lease's C{Last-Modified}), with C{If-Match} on
    the stale ETag so that one node wins. Fires with a held L{_Lease}, or
    L{_Held} (another node downloads).
    """
    name = store.lease_key(key)
    body = json.dumps({"node": store.node, "key": key}).encode()
    for _ in range(3):
        try:
            response = await store.wire.put(name, body, {"If-None-Match": "*"})
            return _Lease(store, name, body, etag_of(response) or "")
        except PreconditionFailed:
            pass
        head = await store.wire.head(name)
        if head is None:
            continue  # (released meanwhile: try again)
        now, modified = server_time(head), last_modified(head)
        if now is None or modified is None or now - modified <= store.lease_ttl:
            return _Held()
        try:
            response = await store.wire.put(name, body, {"If-Match": store.wire.if_match(etag_of(head) or "")})
        except PreconditionFailed:
            return _Held()  # (another node took it over first)
        _log.warn("took over the stale lease on {key} ({age:.0f} s without renewal)", key=key,
                  age=now - modified)
        return _Lease(store, name, body, etag_of(response) or "")
    return _Held()


@implementer(ILease)
class _Lease:
    """A lease this node holds: renewed every quarter of lease_ttl until released."""

    held = True

    def __init__(self, store: Any, name: str, body: bytes, etag: str):
        self.store = store
        self.name = name
        self.body = body
        self.etag = etag
        self.renewing = False
        self.loop = LoopingCall(self._renew)
        self.loop.clock = store.reactor
        self.loop.start(store.lease_ttl / 4, now=False).addErrback(
            lambda f: _log.failure("renewing a lease broke", f))

    def _renew(self) -> None:
        if self.renewing:
            return
        self.renewing = True

        async def renew() -> None:
            try:
                response = await self.store.wire.put(self.name, self.body,
                                                     {"If-Match": self.store.wire.if_match(self.etag)})
                self.etag = etag_of(response) or self.etag
            except PreconditionFailed:
                _log.warn("lost the lease {name}: another node took it over", name=self.name)
                self._stop()
            except StoreUnavailable as e:
                _log.warn("cannot renew the lease {name}: {reason}", name=self.name, reason=str(e))
            finally:
                self.renewing = False
        Deferred.fromCoroutine(renew())

    def _stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        self._stop()
        Deferred.fromCoroutine(self.store.wire.delete(self.name)).addErrback(
            lambda f: _log.info("cannot release the lease {name}: {reason} (it goes stale)",
                                name=self.name, reason=str(f.value)))


@implementer(ILease)
class _Held:
    """Another node holds the lease."""

    held = False

    def release(self) -> None:
        pass


@implementer(ILease)
class _Unleased:
    """A store without conditional PUTs: every node downloads (its lease is always 'held')."""

    held = True

    def release(self) -> None:
        pass


UNLEASED = _Unleased()
