# -*- test-case-name: tests.test_tap -*-
"""
Log level for our own events.

twistd owns log output; our modules log through L{observer}, which drops
events below the configured level before they reach twistd's observers.
Usage in a module: ``_log = Logger(observer=logs.observer)``.

Also here: what may go into a line (L{printable}, L{request_path}: nothing
a client sends can forge a line), the JSON-lines observer of
C{--log-format json} (L{JsonLinesObserver}), and twistd's own text lines made
cheaper for the default C{--log-format text} (L{ClassicText}, L{text_lines}).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from twisted.logger import (FileLogObserver, FilteringLogObserver, ILogObserver, LogLevel,
                            LogLevelFilterPredicate, formatEvent, formatEventAsClassicLogText, formatTime,
                            globalLogPublisher)
from twisted.python.logfile import LogFile
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
    A request's path (no query) for the log: its userinfo hidden
    (L{without_userinfo}), percent-decoded (``/pypi/+f/…``, not ``%2Bf``),
    then L{printable}: a ``%0A`` cannot start a forged line, and a byte that
    is not UTF-8 shows as C{\\xNN}. Every target that goes into a log line
    or an answer's text goes through here.
    """
    return printable(unquote_to_bytes(without_userinfo(raw)).decode("utf-8", "surrogateescape"))


#: A request target in absolute form (RFC 9112 3.2.2): a scheme, then "://".
ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")
#: The end of a URI's authority (RFC 3986 3.2): the first "/", "?" or "#" after it began.
_AUTHORITY_END = re.compile(rb"[/?#]")


def without_userinfo(target: bytes) -> bytes:
    """
    C{target} with the userinfo of its authority (``user:password@``,
    ``user@``) replaced by ``***@``: a client that puts its credentials
    in a proxy request's URI (``GET http://alice:pw@host/x``, ``CONNECT
    alice:pw@host:443``) must not find its password in the log, or echoed
    in an answer. It is done before percent-decoding: a ``%2F`` in a
    password must not end the authority early. The authority is that of an
    absolute-form target (after the scheme's ``://``) or the whole of any
    other target that is not a path (authority form, and whatever a client
    sends instead); it ends at the first ``/``, ``?`` or ``#``, and its
    userinfo runs to its last ``@`` (a raw ``@`` in a password stays hidden
    too). A path (origin form) is left as it is: ``/npm/@scope/x`` holds no
    credentials.
    """
    if target.startswith(b"/"):
        return target
    scheme = ABSOLUTE_FORM.match(target)
    start = scheme.end() if scheme else 0
    end = _AUTHORITY_END.search(target, start)
    at = target.rfind(b"@", start, end.start() if end else len(target))
    if at < 0:
        return target
    return target[:start] + b"***" + target[at:]


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


#: twistd's C{--logfile} and C{--nodaemon}, as twistd read them (set by
#: L{artifactvault.tap} when it gives twistd one of our observers).
target: str | None = None
nodaemon = False


def log_file() -> IO[str]:
    """
    Where twistd writes its own lines (its C{UnixAppLogger}), so that ours
    go there too: standard output in the foreground with no C{--logfile}
    or with ``-`` (a daemon cannot write there); else the C{--logfile}
    (default C{twistd.log}) as a Twisted L{LogFile}, rotated at 1 MB and
    on SIGUSR1 as twistd rotates it.
    """
    if target == "-" and not nodaemon:
        sys.exit("Daemons cannot log to stdout, exiting!")
    if target == "-" or (nodaemon and not target):
        return sys.stdout
    out = LogFile.fromFullPath(target or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):  # (as twistd: only when nothing else took the signal)
        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor
            reactor.callFromThread(out.rotate)
        signal.signal(signal.SIGUSR1, rotate)
    return out  # type: ignore[return-value]


def json_lines() -> ILogObserver:
    """
    The twistd C{--logger} of C{--log-format json} (given by name:
    ``artifactvault.logs.json_lines``): JSON lines to L{log_file}.
    """
    return JsonLinesObserver(log_file())


# -- text lines -------------------------------------------------------------------

#: A format that is one field and nothing else: text its emitter formatted once.
_ONE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")


class ClassicText:
    """
    twistd's text line for an event (L{formatEventAsClassicLogText}'s, to
    the character), made cheaper for the line every request writes: the
    time stamp is formatted once a second rather than once an event, and
    an event whose format is one field holding its text (a request's
    line, formatted once by L{artifactvault.site}) skips Python's
    C{Formatter}. Together they were about a twentieth of the reactor's
    work for a small cold file, by profile (docs/benchmarks.md). Anything
    else is Twisted's own.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._stamp = ""

    def stamp(self, when: float | None) -> str:
        """Twisted's L{formatTime} of C{when}, whose text changes once a second."""
        if when is None or when < 0:
            return formatTime(when)
        second = int(when)
        if second != self._second:
            self._stamp, self._second = formatTime(second), second
        return self._stamp

    def __call__(self, event: dict[str, Any]) -> str | None:
        fmt = event.get("log_format")
        if isinstance(fmt, str) and "log_failure" not in event:
            one = _ONE_FIELD.match(fmt)
            text = event.get(one.group(1)) if one is not None else None
            if type(text) is str and text:
                line = f"{self.stamp(event.get('log_time'))} [{_system(event)}] {text}"
                return line.replace("\n", "\n\t") + "\n"
        return formatEventAsClassicLogText(event, formatTime=self.stamp)


def _system(event: dict[str, Any]) -> str:
    """What Twisted's text line shows between brackets (as its C{_formatSystem})."""
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        return f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
    try:
        return str(system)
    except Exception:
        return "UNFORMATTABLE"


def text_lines() -> ILogObserver:
    """
    The twistd C{--logger} of the default C{--log-format text} (given by
    name: ``artifactvault.logs.text_lines``): twistd's own text lines
    (L{ClassicText}) to where twistd writes them (L{log_file}).
    """
    return FileLogObserver(log_file(), ClassicText())
