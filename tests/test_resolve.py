"""
Tests for L{artifactvault.resolve}: IP addresses answered at once, one
lookup at a time per name, nothing kept after a lookup ends.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hypothesis import given, strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from artifactvault import resolve
from artifactvault.resolve import CoalescingResolver
from tests import support
from tests.fakeupstream import FakeUpstream, Script


@implementer(IResolutionReceiver)
class Receiver:
    """Records what a resolution tells it."""

    def __init__(self) -> None:
        self.began: IHostResolution | None = None
        self.addresses: list[Any] = []
        self.completed = 0
        self.done: Deferred = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        self.began = resolutionInProgress

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.completed += 1
        self.done.callback(self.addresses)


@implementer(IHostnameResolver)
class Inner:
    """A resolver the test answers by hand: the lookups it was asked for, with their receivers."""

    def __init__(self) -> None:
        self.asked: list[tuple[Any, str, int]] = []

    def resolveHostName(self, resolutionReceiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        self.asked.append((resolutionReceiver, hostName, portNumber))

        @implementer(IHostResolution)
        class Resolution:
            name = hostName

            def cancel(self) -> None:
                raise NotImplementedError()

        resolutionReceiver.resolutionBegan(Resolution())
        return Resolution()

    def answer(self, index: int, *addresses: Any) -> None:
        receiver = self.asked[index][0]
        for address in addresses:
            receiver.addressResolved(address)
        receiver.resolutionComplete()


A1 = IPv4Address("TCP", "192.0.2.1", 80)
A2 = IPv6Address("TCP", "2001:db8::1", 80)


class CoalescingTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.inner = Inner()
        self.resolver = CoalescingResolver(self.inner)

    def resolve(self, host: str, port: int = 80, **kwargs: Any) -> Receiver:
        receiver = Receiver()
        resolution = self.resolver.resolveHostName(receiver, host, port, **kwargs)
        self.assertIs(receiver.began, resolution)
        self.assertEqual(resolution.name, host)
        return receiver

    def test_interface(self) -> None:
        verifyObject(IHostnameResolver, self.resolver)

    def test_ipv4_literal_at_once(self) -> None:
        """An IPv4 address is its own answer: given at once, no lookup."""
        receiver = self.resolve("127.0.0.1", 8080)
        self.assertEqual((receiver.addresses, receiver.completed), ([IPv4Address("TCP", "127.0.0.1", 8080)], 1))
        self.assertEqual(self.inner.asked, [])

    def test_ipv6_literal_at_once(self) -> None:
        """An IPv6 address too; none when the caller wants IPv4 only, and still completed."""
        receiver = self.resolve("::1", 443)
        self.assertEqual(receiver.addresses, [IPv6Address("TCP", "::1", 443)])
        receiver = self.resolve("::1", 443, addressTypes=[IPv4Address])
        self.assertEqual((receiver.addresses, receiver.completed), ([], 1))
        self.assertEqual(self.inner.asked, [])

    def test_zoned_ipv6_looked_up(self) -> None:
        """An IPv6 address with a zone goes to getaddrinfo, which knows the zone's scope id."""
        self.resolve("fe80::1%lo")
        self.assertEqual([host for _, host, _ in self.inner.asked], ["fe80::1%lo"])

    def test_udp_not_shortened(self) -> None:
        """Only TCP lookups are answered at once (the daemon connects over TCP alone)."""
        self.resolve("127.0.0.1", transportSemantics="UDP")
        self.assertEqual(len(self.inner.asked), 1)

    def test_concurrent_lookups_share_one(self) -> None:
        """Two lookups of one name while the first is under way: one getaddrinfo, both answered."""
        first, second = self.resolve("mirror.test"), self.resolve("mirror.test")
        self.assertEqual(len(self.inner.asked), 1)
        self.inner.answer(0, A1, A2)
        for receiver in (first, second):
            self.assertEqual((receiver.addresses, receiver.completed), ([A1, A2], 1))

    def test_late_joiner_gets_what_was_found(self) -> None:
        """A lookup that joins after some addresses came gets those, then the rest."""
        first = self.resolve("mirror.test")
        self.inner.asked[0][0].addressResolved(A1)
        second = self.resolve("mirror.test")
        self.inner.answer(0, A2)
        self.assertEqual(first.addresses, [A1, A2])
        self.assertEqual(second.addresses, [A1, A2])

    def test_nothing_kept_after_the_end(self) -> None:
        """Once a lookup ended, the next one of the same name is a new lookup (the system's cache decides)."""
        self.resolve("mirror.test")
        self.inner.answer(0, A1)
        third = self.resolve("mirror.test")
        self.assertEqual((len(self.inner.asked), third.completed), (2, 0))

    def test_distinct_lookups_apart(self) -> None:
        """Another name, port or address family is another lookup."""
        self.resolve("mirror.test")
        self.resolve("other.test")
        self.resolve("mirror.test", 443)
        self.resolve("mirror.test", addressTypes=[IPv4Address])
        self.assertEqual(len(self.inner.asked), 4)

    def test_failing_inner_leaves_nothing_waiting(self) -> None:
        """The inner resolver raising: the error goes to the caller, and the next lookup is asked anew."""
        def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("no resolver")
        self.patch(self.inner, "resolveHostName", broken)
        self.assertRaises(RuntimeError, self.resolver.resolveHostName, Receiver(), "mirror.test", 80)
        self.patch(self.inner, "resolveHostName", Inner.resolveHostName.__get__(self.inner))
        self.resolve("mirror.test")
        self.assertEqual(len(self.inner.asked), 1)

    @given(st.lists(st.integers(min_value=0, max_value=5), max_size=6),
           st.lists(st.sampled_from([A1, A2]), max_size=5))
    def test_every_receiver_gets_everything_once(self, joins: list[int], addresses: list[Any]) -> None:
        """Receivers joining at any point of a lookup each get every address, in order, and one completion."""
        inner = Inner()
        resolver = CoalescingResolver(inner)
        receivers = [Receiver()]
        resolver.resolveHostName(receivers[0], "mirror.test", 80)
        shared = inner.asked[0][0]
        for i, address in enumerate(addresses + [None]):
            for _ in range(joins.count(i)):
                receivers.append(Receiver())
                resolver.resolveHostName(receivers[-1], "mirror.test", 80)
            if address is not None:
                shared.addressResolved(address)
        shared.resolutionComplete()
        self.assertEqual(len(inner.asked), 1)
        for receiver in receivers:
            self.assertEqual((receiver.addresses, receiver.completed), (addresses, 1))


class InstallTests(SynchronousTestCase):

    def test_install_once(self) -> None:
        """install() puts one coalescing resolver in front of the reactor's, and only one."""
        memory = MemoryReactor()
        original = memory.nameResolver
        resolve.install(memory)
        resolve.install(memory)
        self.assertIsInstance(memory.nameResolver, CoalescingResolver)
        self.assertIs(memory.nameResolver._inner, original)

    def test_reactor_without_resolver(self) -> None:
        """A reactor that takes no resolver is left as it is."""
        resolve.install(object())


class RealResolverTests(TestCase):
    """Through the real reactor's getaddrinfo."""

    def test_localhost_shared(self) -> None:
        """Two concurrent lookups of localhost: both get its loopback address from one getaddrinfo."""
        resolver = CoalescingResolver(reactor.nameResolver)
        first, second = Receiver(), Receiver()
        resolver.resolveHostName(first, "localhost", 80, addressTypes=[IPv4Address])
        resolver.resolveHostName(second, "localhost", 80, addressTypes=[IPv4Address])

        def check(_: Any) -> None:
            self.assertIn(IPv4Address("TCP", "127.0.0.1", 80), first.addresses)
            self.assertEqual(second.addresses, first.addresses)
        return second.done.addCallback(check)


class DaemonTests(TestCase):
    """Through the real daemon: an upstream named by host name, many connections to it opened at once."""

    timeout = 120

    def test_concurrent_misses_to_a_named_upstream(self) -> None:
        """
        Twelve cold misses at once to an upstream configured as
        ``localhost``: the daemon opens connections to it together (their
        lookups shared) and every client gets its own bytes.
        """
        fake = FakeUpstream()
        self.addCleanup(fake.close)
        bodies = {f"/f{i}.bin": os.urandom(200_000) for i in range(12)}
        for path, body in bodies.items():
            fake.scripts[path] = Script(body=body, pace=0.01)  # (slow enough that none ends before the last starts)
        base = fake.base.replace("127.0.0.1", "localhost")
        self.assertTrue(base.startswith("http://localhost:"), base)
        daemon = support.Daemon([{"type": "http", "config": {"prefix": "/named/", "base_url": base}}])
        self.addCleanup(daemon.cleanup)
        daemon.start()

        def get(path: str) -> tuple[int, bytes]:
            status, _, body = support.request("GET", daemon.url("/named" + path))
            return status, body

        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = dict(zip(bodies, pool.map(get, bodies)))
        self.assertEqual(answers, {path: (200, body) for path, body in bodies.items()})
        self.assertEqual(sum(fake.count("GET", path) for path in bodies), len(bodies))
