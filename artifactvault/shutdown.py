# -*- test-case-name: tests.test_shutdown -*-
"""
A graceful stop: on SIGTERM the vault stops listening (new connections are
refused), lets the answers under way and the downloads in flight finish for
up to C{shutdown_timeout}, then cuts what is left (a download's temp file is
removed: nothing half-written stays) and stops the rest: the upstream
connection pool, the janitor, the store's thread pool (which finishes the
commits under way), the cache's lock. twistd then exits 0.

Twisted's L{MultiService} stops its children all at once; here the order
matters (the store must outlive the downloads that commit to it), so the
daemon's services stop one after the other, the last added first
(L{InOrder}): the listeners, then L{Drain}, then the rest.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from artifactvault import logs

_log = Logger(observer=logs.observer)

#: How often a draining stop looks whether everything ended (seconds).
POLL = 0.05


class InOrder(MultiService):
    """A L{MultiService} that stops its services one at a time, the last added first."""

    def stopService(self) -> Deferred:
        Service.stopService(self)
        d: Deferred = succeed(None)
        for service in reversed(list(self)):
            d.addBoth(lambda _, s=service: maybeDeferred(s.stopService))
        return d.addBoth(lambda _: None)


class Drain(Service):
    """
    At stop: waits (the listeners already closed) until no request is
    being answered and no download is in flight, for at most C{timeout}
    seconds; then cancels the downloads left and cuts their clients.
    """

    def __init__(self, site: Any, vault: Any, reactor: Any, timeout: float):
        self.site = site
        self.vault = vault
        self.reactor = reactor
        self.timeout = timeout

    def _busy(self) -> tuple[int, int]:
        return len(self.site.active), len(self.vault.flights)

    def stopService(self) -> Deferred | None:
        super().stopService()
        _exit_zero(self.reactor)
        requests, flights = self._busy()
        if not requests and not flights:
            return None
        _log.info("stopping: waiting up to {timeout:g} s for {requests} answers and {flights} downloads "
                  "under way", timeout=self.timeout, requests=requests, flights=flights)
        done: Deferred = Deferred()
        deadline = self.reactor.seconds() + self.timeout

        def look() -> None:
            requests, flights = self._busy()
            if not requests and not flights:
                _log.info("stopping: everything under way has ended")
                done.callback(None)
            elif self.reactor.seconds() >= deadline:
                self._cut()
                self.reactor.callLater(0, done.callback, None)
            else:
                self.reactor.callLater(POLL, look)

        look()
        return done

    def _cut(self) -> None:
        flights = list(self.vault.flights)
        requests = list(self.site.active)
        _log.warn("stopping: shutdown_timeout ({timeout:g} s) is over: cancelling {flights} downloads "
                  "and cutting {requests} answers", timeout=self.timeout, flights=len(flights),
                  requests=len(requests))
        for flight in flights:
            flight.cancel("the vault is shutting down")
        for request in requests:
            transport = getattr(getattr(request, "channel", None), "transport", None)
            if transport is not None:
                transport.abortConnection()


def _exit_zero(reactor: Any) -> None:
    """
    twistd ends a process stopped by SIGTERM by raising SIGTERM again once
    its services have stopped (the exit status is then 143). A vault stops
    gracefully on SIGTERM (it is how systemd and docker ask it to): that
    is a clean exit, status 0, and supervisors should see it so. (Twisted
    keeps the signal in the reactor's C{_exitSignal}; other reactors have none.)
    """
    if getattr(reactor, "_exitSignal", None) == signal.SIGTERM:
        reactor._exitSignal = None
