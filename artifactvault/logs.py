# -*- test-case-name: tests.test_tap -*-
"""
Log level for our own events.

twistd owns log output; our modules log through L{observer}, which drops
events below the configured level before they reach twistd's observers.
Usage in a module: ``_log = Logger(observer=logs.observer)``.

Also here: what may go into a line (L{printable}, L{request_path}: nothing
a client sends can forge a line), and the JSON-lines observer of
C{--log-format json} (L{JsonLinesObserver}).
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from twisted.logger import (FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate,
                            formatEvent, globalLogPublisher)
from zope.interface import implementer

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def set_level(name: str) -> None:
    """Set the lowest level logged: debug, info, warn, error or critical."""
    # (the predicate reads its level from its namespace map, filled from
    # defaultLogLevel only when made: setting that alone changes nothing)
    _predicate.setLogLevelForNamespace("", LogLevel.levelWithName(name))


# -- what may go into a log line ------------------------------------------------

#: Characters that would let text written into a log line forge or garble
#: another one: controls (a newline starts a forged line), DEL and the C1
#: controls, Unicode's own line and paragraph separators, the backslash (so
#: that an escape is never ambiguous) and the space (so the path stays one
#: field of the text line); and the lone surrogates that stand for bytes
#: that were not UTF-8 (C{surrogateescape}).
_UNSAFE = re.compile("[\\x00-\\x20\\x7f-\\x9f\\\\\\u2028\\u2029\\udc80-\\udcff]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    if c == 0x5C:
        return "\\\\"
    if 0xDC80 <= c <= 0xDCFF:
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    """C{text} with every character that could forge or garble a log line escaped (C{\\xNN}, C{\\\\})."""
    return _UNSAFE.sub(_escape, text)


def request_path(raw: bytes) -> str:
    """
    A request's path (no query) for the log: percent-decoded (``/pypi/+f/…``,
    not ``%2Bf``), then L{printable}: a ``%0A`` cannot start a forged line,
    and a byte that is not UTF-8 shows as C{\\xNN}.
    """
    return printable(unquote_to_bytes(raw).decode("utf-8", "surrogateescape"))


# -- JSON lines -------------------------------------------------------------------

#: Event keys that are the logging system's, not the event's fields.
_INTERNAL = frozenset({"log_logger", "log_source", "log_format", "log_level", "log_namespace",
                       "log_time", "log_failure", "log_io", "log_text", "log_system", "log_trace",
                       "log_flattened", "log_legacy", "message", "format", "isError", "printed",
                       "system", "time", "why", "failure"})


@implementer(ILogObserver)
class JsonLinesObserver:
    """
    One JSON object a line for log shippers (C{--log-format json}): time,
    level, namespace, the formatted message ("text"), and the event's own
    fields (a request's method, path, status, cache, bytes, ms, backend...);
    a failure's traceback as "traceback". Fields that are not plain values
    are left out: they could be anything (a request, a response).
    """

    def __init__(self, out: IO[str]):
        self.out = out

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time") or time.time(), timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level.name if level is not None else "info",
            "namespace": event.get("log_namespace") or event.get("system") or "-",
            "text": formatEvent(event),
        }
        for key, value in event.items():
            if key in _INTERNAL or key in record or key.startswith("log_"):
                continue
            if value is None or isinstance(value, (str, int, float, bool)):
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        try:
            self.out.write(json.dumps(record, ensure_ascii=True, default=str) + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass


#: Where L{json_lines} writes: a file name, or None (or ``-``) for standard output.
json_target: str | None = None


def json_lines() -> ILogObserver:
    """
    The twistd C{--logger} of C{--log-format json} (given by name:
    ``artifactvault.logs.json_lines``): JSON lines to L{json_target}, set
    from twistd's C{--logfile}, appended to; else to standard output.
    """
    if json_target and json_target != "-":
        return JsonLinesObserver(open(json_target, "a", encoding="utf-8"))
    return JsonLinesObserver(sys.stdout)
