# -*- test-case-name: tests.test_slicedjson -*-
"""
JSON for documents of tens of MB (a PyPI project list), a slice at a time.

Large index pages are parsed and rendered in a thread so the reactor can go
on serving, but a thread only lets the reactor run between Python steps:
one C call holds the GIL until it returns. C{json.loads} of a 40 MB page is
one call of hundreds of milliseconds, and even copying a buffer of tens of
MB (joining, decoding, concatenating) takes tens, during which every client
waits. So here nothing is handled whole: long arrays (at the top level, and
in the values of a top-level object, where the bulk of an index page is) are
encoded and decoded L{SLICE} items per call; text is decoded a MiB at a
time and read through a window that slides over it; output is a list of
chunks, never joined. Each C call is short, and the reactor waits at most
for one of them.

L{dumps} writes exactly C{json.dumps(obj, ensure_ascii=False,
separators=(",", ":"))} in UTF-8, and L{loads} accepts what C{json.loads}
accepts of UTF-8 text (raising C{ValueError} for anything else).
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Callable, Iterator

#: Items encoded or decoded in one C call.
SLICE = 2000
#: Bytes decoded in one C call.
TEXT_SLICE = 1024 * 1024
#: Characters kept ahead in the window: an item shorter than this is never cut by its end.
MARGIN = 64 * 1024

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
#: A run of up to SLICE plain values (strings, numbers, literals), each followed by a comma.
_RUN = re.compile(r'(?:[ \t\n\r]*(?:"(?:[^"\\\x00-\x1f]|\\.)*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?'
                  r'|true|false|null)[ \t\n\r]*,){1,%d}' % SLICE)
#: Containers this deep are walked here; deeper ones are small items, decoded whole.
_WALK_DEPTH = 2


# -- out ---------------------------------------------------------------------------

def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, long arrays a slice at a time (joined: for small documents)."""
    return b"".join(dump_chunks(obj))


def dump_chunks(obj: Any) -> list[bytes]:
    """Compact UTF-8 JSON as a list of chunks, none larger than a slice of items."""
    parts: list[bytes] = []
    _encode(obj, parts, 0)
    return parts


def encode_string(value: str) -> str:
    """One string as JSON (as L{dumps} writes it)."""
    return _ENCODER.encode(value)


def discard(doc: Any) -> None:
    """
    Empty the long lists of a document that nothing else holds, a slice at a
    time: freeing hundreds of thousands of items is one C call of tens of ms
    when the last reference to their list goes.
    """
    lists = [doc] if isinstance(doc, list) else list(doc.values()) if isinstance(doc, dict) else []
    for items in lists:
        if isinstance(items, list):
            while items:
                del items[-SLICE:]


def _encode(obj: Any, parts: list[bytes], depth: int) -> None:
    if depth < _WALK_DEPTH and isinstance(obj, list) and len(obj) > SLICE:
        parts.append(b"[")
        for i in range(0, len(obj), SLICE):
            if i:
                parts.append(b",")
            parts.append(_ENCODER.encode(obj[i:i + SLICE])[1:-1].encode("utf-8"))
        parts.append(b"]")
    elif depth < _WALK_DEPTH and isinstance(obj, dict) and len(obj) <= SLICE \
            and all(isinstance(key, str) for key in obj):
        parts.append(b"{")
        for n, (key, value) in enumerate(obj.items()):
            if n:
                parts.append(b",")
            parts.append(_ENCODER.encode(key).encode("utf-8") + b":")
            _encode(value, parts, depth + 1)
        parts.append(b"}")
    else:
        parts.append(_ENCODER.encode(obj).encode("utf-8"))


# -- in ----------------------------------------------------------------------------

def text_slices(data: bytes | bytearray | memoryview, errors: str = "strict") -> Iterator[str]:
    """UTF-8 bytes as text, a MiB at a time (C{errors} as for C{bytes.decode})."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    view = memoryview(data)
    for i in range(0, len(view), TEXT_SLICE):
        yield decoder.decode(view[i:i + TEXT_SLICE])
    yield decoder.decode(b"", final=True)


def loads(data: bytes | str, item: Callable[[Any], Any] | None = None,
          member: Callable[[str, str, Any], Any] | None = None) -> Any:
    """
    Decode JSON (UTF-8 if bytes); C{ValueError} if it is not valid JSON.
    With C{item}, each element of a long-array candidate (an array at the
    top level or in a value of a top-level object) is replaced by
    C{item(element)} as it is read: a caller that needs little of each of
    many objects then never holds them all. C{member} does the same for the
    members of an object that is the value of a top-level object's member:
    C{member(outer key, key, value)} (an npm package document's versions).
    """
    w = _Window(iter([data]) if isinstance(data, str) else text_slices(data))
    w.skip()
    value = _value(w, 0, item, member)
    w.skip()
    if w.peek():
        raise ValueError(f"extra data at character {w.offset()}")
    return value


class _Window:
    """The text being decoded, held a window at a time, C{i} the position in C{text}."""

    def __init__(self, slices: Iterator[str]):
        self._slices = slices
        self.text = ""
        self.i = 0
        self.done = False
        self._dropped = 0  # characters before the window (for error messages)

    def offset(self) -> int:
        return self._dropped + self.i

    def ensure(self, n: int = MARGIN) -> None:
        """Have at least C{n} characters from C{i} on in the window, unless the text ends sooner."""
        if self.done or len(self.text) - self.i >= n:
            return
        parts = [self.text[self.i:]]
        have = len(parts[0])
        while have < n:
            more = next(self._slices, None)
            if more is None:
                self.done = True
                break
            parts.append(more)
            have += len(more)
        self._dropped += self.i
        self.text, self.i = "".join(parts), 0

    def grow(self) -> None:
        """Twice as much ahead (an item longer than the margin)."""
        self.ensure(2 * max(len(self.text) - self.i, MARGIN))

    def skip(self) -> None:
        while True:
            self.i = _SPACE.match(self.text, self.i).end()  # type: ignore[union-attr]
            if self.i < len(self.text) or self.done:
                return
            self.ensure()

    def peek(self) -> str:
        self.ensure(1)
        return self.text[self.i:self.i + 1]

    def expect(self, what: str) -> None:
        self.skip()
        if self.peek() != what:
            raise ValueError(f"expected {what!r} at character {self.offset()}")
        self.i += 1
        self.skip()

    def decode(self) -> Any:
        """One value, decoded whole (the window grown until it holds all of it)."""
        while True:
            self.ensure()
            try:
                value, end = _DECODER.raw_decode(self.text, self.i)
            except json.JSONDecodeError:
                if self.done:
                    raise
                self.grow()
                continue
            if end == len(self.text) and not self.done:
                self.grow()  # (a number may go on in the next slice)
                continue
            self.i = end
            return value


def _value(w: _Window, depth: int, item: Any, member: Any = None, outer: str = "") -> Any:
    if depth < _WALK_DEPTH:
        c = w.peek()
        if c == "{":
            return _object(w, depth, item, member, outer)
        if c == "[":
            return _array(w, depth, item)
    return w.decode()


def _object(w: _Window, depth: int, item: Any, member: Any = None, outer: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    w.expect("{")
    if w.peek() == "}":
        w.i += 1
        return out
    while True:
        if w.peek() != '"':
            raise ValueError(f"expected a property name at character {w.offset()}")
        key = w.decode()
        w.expect(":")
        value = _value(w, depth + 1, item, member, key)
        out[key] = value if member is None or depth != 1 else member(outer, key, value)
        w.skip()
        if w.peek() == "}":
            w.i += 1
            return out
        w.expect(",")


def _array(w: _Window, depth: int, item: Any) -> list[Any]:
    out: list[Any] = []
    w.expect("[")
    if w.peek() == "]":
        w.i += 1
        return out
    while True:
        w.ensure()
        run = _RUN.match(w.text, w.i)
        if run is not None:  # many plain items, each with its comma: one C call for them all
            items = json.loads("[" + w.text[w.i:run.end() - 1] + "]")
            out.extend(items if item is None else map(item, items))
            w.i = run.end()
            w.skip()
            continue
        value = _value(w, depth + 1, None)
        out.append(value if item is None else item(value))
        w.skip()
        if w.peek() == "]":
            w.i += 1
            return out
        w.expect(",")
