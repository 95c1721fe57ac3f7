"""
Tests for L{artifactvault.logs}: what may go into a line, and C{--log-format
json} (one JSON object a line) in memory and from the real daemon.
"""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel, LogPublisher, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from artifactvault import logs, tap
from tests import support


class PrintableTests(SynchronousTestCase):
    def test_escapes(self) -> None:
        """Controls, separators, backslash and space are escaped; other text stays."""
        self.assertEqual(logs.printable("a\nb\r\tc\x1b[31m\u2028 d\\é"), "a\\x0ab\\x0d\\x09c\\x1b[31m\\u2028\\x20d\\\\é")

    def test_request_path(self) -> None:
        """Decoded (%2B is +), and bytes that are not UTF-8 as \\xNN."""
        self.assertEqual(logs.request_path(b"/pypi/%2Bf/a%0Ab%ff/%C3%A9"), "/pypi/+f/a\\x0ab\\xff/é")


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
        options = tap.Options()
        options.parent = Parent(logfile=None)  # type: ignore[attr-defined]
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
