# -*- test-case-name: tests.test_apt -*-
"""
Which release set each apt client was given, so that the index files it
asks for next by their plain names are the ones that Release lists, even
when the vault's current set has changed in between (for another client).

apt asks for InRelease and then the indexes over one connection, so the
connection is the first answer. A connection that breaks in the middle of
an update (a proxy's idle timeout, a network blip) is reopened by apt,
which goes on with the indexes without asking for InRelease again: the
new connection has been given nothing. For that one the set last given to
the same client address, within L{PEER_SECONDS}, is the answer. Clients
behind one address (NAT) share it; the set then is the one the last of them
was given, which is never less right than the current set would be. A
client asking for an index by name with no InRelease before, on no
connection and from no address the vault gave one to, gets the current set.
"""

from __future__ import annotations

import collections
import weakref
from typing import Any, Callable, Generic, TypeVar

#: How long a client address keeps the set it was given last (an apt-get
#: update takes seconds between its InRelease and its last index).
PEER_SECONDS = 600.0
#: At most this many (address, directory) pairs are remembered, the oldest dropped first.
PEERS = 4096

S = TypeVar("S")


class GivenSets(Generic[S]):
    """The set given last per connection (for as long as it lives) and per client address (for a while)."""

    def __init__(self, clock: Callable[[], float], peer_seconds: float = PEER_SECONDS, peers: int = PEERS):
        self._clock = clock
        self._peer_seconds = peer_seconds
        self._peers = peers
        self._by_channel: weakref.WeakKeyDictionary[Any, dict[str, S]] = weakref.WeakKeyDictionary()
        self._by_peer: collections.OrderedDict[tuple[str, str], tuple[float, S]] = collections.OrderedDict()

    def gave(self, request: Any, directory: str, given: S) -> None:
        """C{request}'s client got C{directory}'s release set C{given}."""
        if request.channel is not None:
            self._by_channel.setdefault(request.channel, {})[directory] = given
        peer = _peer(request)
        if peer is not None:
            key = (peer, directory)
            self._by_peer.pop(key, None)
            self._by_peer[key] = (self._clock(), given)
            while len(self._by_peer) > self._peers:
                self._by_peer.popitem(last=False)

    def given(self, request: Any, directory: str) -> S | None:
        """The set C{request}'s connection was given, else its address lately, else None."""
        found = self._by_channel.get(request.channel, {}).get(directory) if request.channel is not None else None
        if found is not None:
            return found
        peer = _peer(request)
        if peer is None:
            return None
        at, given = self._by_peer.get((peer, directory), (None, None))
        if at is None or self._clock() - at > self._peer_seconds:
            return None
        return given


def _peer(request: Any) -> str | None:
    """The client's address (its host), or None for a client with none (a UNIX socket)."""
    try:
        address = request.getClientAddress()
    except AttributeError:
        return None
    return getattr(address, "host", None)
