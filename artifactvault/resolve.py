# -*- test-case-name: tests.test_resolve -*-
"""
Host name resolution for the daemon's outgoing connections.

Twisted's C{HostnameEndpoint} (under the upstream agent and the S3 client)
resolves the host of every new connection with C{getaddrinfo} in the
reactor's thread pool, even an IP address, which needs no resolving; and a
burst of cold misses opens several connections to one mirror at once, each
with its own lookup (a query to the DNS server where the system keeps no
cache, as in most containers), queued behind the others in that pool.

L{CoalescingResolver} answers an IP address at once, and lets concurrent
lookups of one name share one C{getaddrinfo}. It keeps nothing once a
lookup has ended: how long an answer stays good is the system resolver's
business (its cache, the name's TTL), not the vault's.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Sequence

from zope.interface import implementer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver


@implementer(IHostResolution)
class _Resolution:
    """A lookup as its receiver sees it (C{cancel} is not supported: Twisted's own is not)."""

    def __init__(self, name: str):
        self.name = name

    def cancel(self) -> None:
        raise NotImplementedError()


def literal(host: str, port: int) -> IPv4Address | IPv6Address | None:
    """The address C{host} names by itself (an IPv4 or IPv6 literal without a zone), or None."""
    if "%" in host:
        return None  # (an IPv6 address with a zone: getaddrinfo knows its scope id)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None  # (a name)
    if ip.version == 4:
        return IPv4Address("TCP", host, port)
    return IPv6Address("TCP", host, port)


@implementer(IResolutionReceiver)
class _Shared:
    """One lookup under way: what it found is replayed to every receiver that asked for it meanwhile."""

    def __init__(self, key: tuple, pending: dict[tuple, "_Shared"]):
        self._key = key
        self._pending = pending
        self.receivers: list[IResolutionReceiver] = []
        self.addresses: list[Any] = []

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass  # (each receiver was told of its own resolution when it asked)

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)
        for receiver in list(self.receivers):
            receiver.addressResolved(address)

    def resolutionComplete(self) -> None:
        if self._pending.get(self._key) is self:
            del self._pending[self._key]
        for receiver in self.receivers:
            receiver.resolutionComplete()


@implementer(IHostnameResolver)
class CoalescingResolver:
    """Resolves as C{inner} does, but IP addresses at once and one lookup at a time per name."""

    def __init__(self, inner: IHostnameResolver):
        self._inner = inner
        self._pending: dict[tuple, _Shared] = {}

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str, portNumber: int = 0,
                        addressTypes: Sequence[type] | None = None,
                        transportSemantics: str = "TCP") -> IHostResolution:
        resolution = _Resolution(hostName)
        literal_address = literal(hostName, portNumber) if transportSemantics == "TCP" else None
        if literal_address is not None:
            resolutionReceiver.resolutionBegan(resolution)
            if addressTypes is None or type(literal_address) in addressTypes:
                resolutionReceiver.addressResolved(literal_address)
            resolutionReceiver.resolutionComplete()
            return resolution
        key = (hostName, portNumber, _types(addressTypes), transportSemantics)
        shared = self._pending.get(key)
        resolutionReceiver.resolutionBegan(resolution)
        if shared is not None:
            shared.receivers.append(resolutionReceiver)
            for address in shared.addresses:  # (what it found before this one asked)
                resolutionReceiver.addressResolved(address)
            return resolution
        shared = self._pending[key] = _Shared(key, self._pending)
        shared.receivers.append(resolutionReceiver)
        try:
            self._inner.resolveHostName(shared, hostName, portNumber, addressTypes, transportSemantics)
        except BaseException:
            self._pending.pop(key, None)  # (never a lookup others would wait on forever)
            raise
        return resolution


def _types(address_types: Iterable[type] | None) -> frozenset | None:
    return None if address_types is None else frozenset(address_types)


def install(reactor: Any) -> None:
    """Put a L{CoalescingResolver} in front of C{reactor}'s resolver (once), if it takes one."""
    current = getattr(reactor, "nameResolver", None)
    if current is None or isinstance(current, CoalescingResolver) or not hasattr(reactor, "installNameResolver"):
        return
    reactor.installNameResolver(CoalescingResolver(current))
