"""
Tests for L{artifactvault.logs}: what may go into a line, C{--log-format
json} (one JSON object a line) in memory and from the real daemon, and the
default text lines (twistd's, made cheaper).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import (FileLogObserver, Logger, LogLevel, LogPublisher, formatEventAsClassicLogText,
                            globalLogPublisher)
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase, TestCase

from artifactvault import logs, tap
from tests import support
from tests.headers import bounded


class PrintableTests(SynchronousTestCase):
    def test_escapes(self) -> None:
        """Controls, separators, backslash and space are escaped; other text stays."""
        self.assertEqual(logs.printable("a\nb\r\tc\x1b[31m\u2028 d\\é"), "a\\x0ab\\x0d\\x09c\\x1b[31m\\u2028\\x20d\\\\é")

    def test_request_path(self) -> None:
        """Decoded (%2B is +), and bytes that are not UTF-8 as \\xNN."""
        self.assertEqual(logs.request_path(b"/pypi/%2Bf/a%0Ab%ff/%C3%A9"), "/pypi/+f/a\\x0ab\\xff/é")


#: What a client may put in a target's userinfo: RFC 3986's characters (":" and sub-delims among
#: them), percent-encoded bytes of any kind (a "%2F", a "%40"), and a raw "@" clients send anyway.
_userinfo = st.lists(st.one_of(st.sampled_from(list(b"abcXYZ019-._~!$&'()*+,;=:@")).map(lambda c: bytes([c])),
                               st.integers(0, 255).map(lambda b: b"%%%02X" % b)),
                     max_size=20).map(b"".join)
_hosts = st.from_regex(rb"\A[a-z0-9.-]{1,20}(:[0-9]{1,5})?\Z")
#: What follows an authority: nothing, a path (an "@" in it: npm's scopes), a query.
_rests = st.one_of(st.just(b""), st.from_regex(rb"\A[/?][A-Za-z0-9/@:%._~-]{0,30}\Z"))
_schemes = st.sampled_from([b"http://", b"HTTP://", b"https://", b""])  # ("": CONNECT's authority form)


class UserinfoTests(SynchronousTestCase):
    """A target's userinfo (a client's password) never reaches a log line."""

    @bounded(500)
    @given(_schemes, _userinfo, _hosts, _rests)
    def test_hidden(self, scheme: bytes, userinfo: bytes, host: bytes, rest: bytes) -> None:
        """
        Any userinfo before any host, whatever follows it: the line shows
        C{***@} and the rest of the target as it would without one.
        """
        self.assertEqual(logs.request_path(scheme + userinfo + b"@" + host + rest),
                         logs.request_path(scheme + b"***@" + host + rest))

    @bounded(300)
    @given(_schemes, _hosts, _rests)
    def test_no_userinfo(self, scheme: bytes, host: bytes, rest: bytes) -> None:
        """A target with no userinfo is logged as it was (an "@" in its path or query is not one)."""
        self.assertEqual(logs.without_userinfo(scheme + host + rest), scheme + host + rest)

    def test_examples(self) -> None:
        """Encoded "/" and "@" in a password, a raw "@", a path (origin form) with an "@"."""
        for target, logged in ((b"http://alice:hunter2@other.example/x", "http://***@other.example/x"),
                               (b"http://al%40ice:p%2Fw%40x@h:81/x@y", "http://***@h:81/x@y"),
                               (b"http://alice:p@ss@h/", "http://***@h/"),
                               (b"alice:hunter2@other.example:443", "***@other.example:443"),
                               (b"http://alice@h", "http://***@h"),
                               (b"/npm/@scope/pkg", "/npm/@scope/pkg")):
            self.assertEqual(logs.request_path(target), logged, target)


class LevelTests(SynchronousTestCase):
    """log_level decides which of our events reach twistd's observers."""

    def passed(self, level: str, event_level: LogLevel) -> bool:
        logs.set_level(level)
        self.addCleanup(logs.set_level, "info")
        seen: list[dict] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        Logger(observer=logs.observer, namespace="artifactvault.test").emit(event_level, "an event")
        return any(e.get("log_namespace") == "artifactvault.test" for e in seen)

    def test_debug_shows_debug(self) -> None:
        self.assertTrue(self.passed("debug", LogLevel.debug))

    def test_warn_hides_info(self) -> None:
        self.assertFalse(self.passed("warn", LogLevel.info))
        self.assertTrue(self.passed("warn", LogLevel.warn))

    def test_info_hides_debug(self) -> None:
        self.assertFalse(self.passed("info", LogLevel.debug))


class JsonLinesTests(SynchronousTestCase):
    def test_one_object_a_line(self) -> None:
        """Each event is one line of JSON: time, level, namespace, text, and its plain fields."""
        out = io.StringIO()
        publisher = LogPublisher(logs.JsonLinesObserver(out))
        log = Logger(namespace="artifactvault.site", observer=publisher)
        log.info("{request_line}", request_line="GET /a 200 HIT 1 bytes 0.1 ms", method="GET", path="/a\nx",
                 status=200, bytes=1, ms=0.1, backend=None, request=object())
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("it broke")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = map(json.loads, lines)
        self.assertEqual({k: first[k] for k in ("level", "namespace", "text", "method", "path", "status", "backend")},
                         {"level": "info", "namespace": "artifactvault.site",
                          "text": "GET /a 200 HIT 1 bytes 0.1 ms", "method": "GET", "path": "/a\nx",
                          "status": 200, "backend": None})
        self.assertNotIn("request", first)
        self.assertTrue(first["time"].endswith("Z"))
        self.assertEqual(second["level"], "critical")
        self.assertIn("ZeroDivisionError", second["traceback"])

    def test_option(self) -> None:
        """--log-format json gives twistd our observer as its --logger; anything else is refused."""
        class Parent(dict):
            pass
        self.patch(logs, "target", None)
        self.patch(logs, "nodaemon", False)
        options = tap.Options()
        options.parent = Parent(logfile=None, nodaemon=True)  # type: ignore[attr-defined]
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(f"cache_dir: {self.mktemp()}\nbackends: []\n")
        options.parseOptions(["--config", config, "--log-format", "json"])
        self.assertEqual(options.parent["logger"], "artifactvault.logs.json_lines")  # type: ignore[attr-defined]
        self.assertIsInstance(logs.json_lines(), logs.JsonLinesObserver)
        error = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--config", config, "--log-format", "xml"])
        self.assertEqual(str(error), "artifactvault: --log-format: must be text or json, not 'xml'")


class JsonDaemonTests(TestCase):
    def test_daemon(self) -> None:
        """The real daemon with --log-format json: every line is JSON; a request's has its fields; no query."""
        files = support.upstream_url("files")
        daemon = support.Daemon([{"type": "http", "config": {"prefix": "/files/", "base_url": files}}])
        self.addCleanup(daemon.cleanup)
        daemon.start(args=["--log-format", "json"])
        self.assertEqual(support.request("GET", daemon.url("/files/small.bin?token=s3cret"))[0], 200)
        daemon.wait_log('"path": "/files/small.bin"')
        daemon.stop()
        records = [json.loads(line) for line in daemon.log().splitlines() if line.strip()]
        request = [r for r in records if r.get("path") == "/files/small.bin"][0]
        self.assertEqual((request["method"], request["status"], request["cache"], request["bytes"],
                          request["backend"]), ("GET", 200, "MISS", 4096, "http /files/"))
        self.assertNotIn("s3cret", daemon.log())


#: Events as our modules and Twisted's emit them: one-field formats (a request's
#: line), formats with several fields, none, failures, a log_system, odd times.
_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_events = st.fixed_dictionaries(
    {"log_format": st.one_of(st.just("{request_line}"), st.just("stored {what}: {size} bytes"), _texts,
                             st.just("{missing}"), st.none())},
    optional={"request_line": st.one_of(_texts, st.integers(), st.none()), "what": _texts, "size": st.integers(),
              "log_time": st.one_of(st.none(), st.floats(0, 4e9), st.integers(0, 4_000_000_000)),
              "log_namespace": st.one_of(_texts, st.none()), "log_level": st.sampled_from(list(LogLevel.iterconstants())),
              "log_system": st.one_of(_texts, st.none())})


class ClassicTextTests(SynchronousTestCase):
    """L{logs.ClassicText} writes what twistd's own text observer writes, character for character."""

    @bounded(400)
    @given(events=st.lists(_events, min_size=1, max_size=5))
    def test_as_twisted(self, events: list) -> None:
        fast = logs.ClassicText()  # (one for all: its time stamp is remembered from event to event)
        for event in events:
            self.assertEqual(fast(event), formatEventAsClassicLogText(event))

    def test_failure(self) -> None:
        """An event with a failure (its traceback below the line) is Twisted's own."""
        try:
            1 / 0
        except ZeroDivisionError:
            event = {"log_format": "{request_line}", "request_line": "it broke", "log_failure": Failure(),
                     "log_time": 1e9, "log_namespace": "a", "log_level": LogLevel.critical}
        text = logs.ClassicText()(event)
        self.assertEqual(text, formatEventAsClassicLogText(event))
        self.assertIn("ZeroDivisionError", text)

    def test_request_line(self) -> None:
        """A request's line as the site emits it (its text formatted once, its fields beside it)."""
        out = io.StringIO()
        publisher = LogPublisher(FileLogObserver(out, logs.ClassicText()))
        Logger(observer=publisher, namespace="artifactvault.site").info(
            "{request_line}", request_line="GET /a 200 HIT 1 bytes 0.1 ms", method="GET", status=200)
        self.assertRegex(out.getvalue(), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "
                                         r"\[artifactvault\.site#info\] GET /a 200 HIT 1 bytes 0\.1 ms\n\Z")


class TextTargetTests(SynchronousTestCase):
    """L{logs.text_lines} and L{logs.json_lines} write where twistd writes its own text lines."""

    def target(self, logfile: str | None, nodaemon: bool) -> object:
        self.patch(logs, "target", logfile)
        self.patch(logs, "nodaemon", nodaemon)
        out = logs.text_lines()._outFile  # type: ignore[attr-defined]
        json_out = logs.json_lines().out  # type: ignore[attr-defined]
        if out is not __import__("sys").stdout:
            self.addCleanup(json_out.close)
        self.assertEqual(getattr(json_out, "path", json_out), getattr(out, "path", out))
        return out

    def test_foreground(self) -> None:
        """In the foreground, standard output, with no --logfile or with "-"."""
        self.assertIs(self.target(None, True), __import__("sys").stdout)
        self.assertIs(self.target("-", True), __import__("sys").stdout)

    def test_daemon_to_stdout_refused(self) -> None:
        self.assertEqual(str(self.assertRaises(SystemExit, self.target, "-", False)),
                         "Daemons cannot log to stdout, exiting!")

    def test_logfile_rotates(self) -> None:
        """A --logfile is a Twisted LogFile, rotated on SIGUSR1 as twistd rotates it."""
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        path = os.path.abspath(self.mktemp())
        out = self.target(path, False)
        self.addCleanup(out.close)  # type: ignore[attr-defined]
        self.assertIsInstance(out, LogFile)
        self.assertEqual(out.path, path)  # type: ignore[attr-defined]
        self.assertTrue(callable(signal.getsignal(signal.SIGUSR1)))

    def test_option(self) -> None:
        """The default text format gives twistd our observer, unless a --logger or --syslog was chosen."""
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(f"cache_dir: {self.mktemp()}\nbackends: []\n")
        self.patch(logs, "target", None)
        self.patch(logs, "nodaemon", False)

        def parsed(**parent: object) -> dict:
            options = tap.Options()
            options.parent = dict(parent)  # type: ignore[attr-defined]
            options.parseOptions(["--config", config])
            return options.parent  # type: ignore[attr-defined]
        self.assertEqual(parsed(logfile="x.log", nodaemon=True)["logger"], "artifactvault.logs.text_lines")
        self.assertEqual((logs.target, logs.nodaemon), ("x.log", True))
        self.assertEqual(parsed(logger="my.observer")["logger"], "my.observer")
        self.assertIsNone(parsed(syslog=True).get("logger"))


class TextDaemonTests(TestCase):
    def test_logfile_rotated_on_sigusr1(self) -> None:
        """
        The real daemon with twistd's --logfile: twistd's text lines in that
        file, and SIGUSR1 rotates it (the old lines in FILE.1, new ones in FILE),
        as twistd's own observer does.
        """
        daemon = support.Daemon([])
        self.addCleanup(daemon.cleanup)
        daemon.write_config()
        path = os.path.join(daemon.dir, "vault.log")
        proc = subprocess.Popen([support.twistd(), "-n", "--pidfile=", f"--logfile={path}", "artifactvault",
                                 "--config", daemon.config_path], cwd=daemon.dir,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (proc.poll() is None and proc.kill(), proc.wait()))
        self.assertEqual(support.wait_http(daemon.url("/-/health"), 20, proc), 200)

        def logged(name: str, text: str) -> None:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with open(name) as f:
                        if text in f.read():
                            return
                except FileNotFoundError:
                    pass
                self.assertLess(time.monotonic(), deadline, f"{text!r} not in {name}")
                time.sleep(0.02)
        self.assertEqual(support.request("GET", daemon.url("/-/health?before"))[0], 200)
        logged(path, "GET /-/health 200")
        proc.send_signal(signal.SIGUSR1)
        logged(path + ".1", "GET /-/health 200")
        self.assertEqual(support.request("GET", daemon.url("/-/status"))[0], 200)
        logged(path, "GET /-/status 200")
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertRegex(lines[-1], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[artifactvault\.site#info\] "
                                    r"GET /-/status 200 ")
        self.assertNotIn("/-/health", "\n".join(lines))
