"""
Tests for L{artifactvault.tap}, L{artifactvault.service}, the twistd plugin
and C{vault.tac}: options, one-line config errors, the service tree.
"""

from __future__ import annotations

import os

import yaml
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IServiceMaker, MultiService, loadApplication
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from artifactvault import logs, tap
from artifactvault import service as service_module
from artifactvault.cache.spool import READY
from artifactvault.cache.store import CacheInUse, FileStore
from artifactvault.memory import TRIM_INTERVAL
from artifactvault.resolve import CoalescingResolver
from artifactvault.service import COMMIT_THREADS, SWEEP_INTERVAL, _StoreService, build
from artifactvault.site import VaultSite
from tests import support

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ThreadlessReactor(MemoryReactorClock):
    """A memory reactor whose thread pool does the work at once."""

    def getThreadPool(self) -> "ThreadlessReactor":
        return self

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def callFromThread(self, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        f(*args, **kwargs)

    def start(self) -> None:
        """(as the store's thread pool)"""

    def stop(self) -> None:
        """(as the store's thread pool)"""


class TapMixin:
    def setUp(self) -> None:
        self.addCleanup(logs.set_level, "info")
        self.cache = self.mktemp()

    def config_file(self, **data: object) -> str:
        path = self.mktemp() + ".yml"
        data.setdefault("cache_dir", self.cache)
        data.setdefault("backends", [{"type": "http", "config": {"prefix": "/files/",
                                                                   "base_url": "http://up.test/"}}])
        with open(path, "w") as f:
            yaml.safe_dump(data, f)
        return path

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def assertExits(self, *args: str) -> str:
        """Parsing C{args} stops with one line starting 'artifactvault: '."""
        error = self.assertRaises(SystemExit, self.parse, *args)
        message = str(error.code)
        self.assertTrue(message.startswith("artifactvault: "), message)
        self.assertNotIn("\n", message)
        self.assertNotIn("Traceback", message)
        return message


class OptionsTests(TapMixin, SynchronousTestCase):

    def test_config(self) -> None:
        """--config loads and checks the file while parsing options."""
        options = self.parse("--config", self.config_file(http_port=9999))
        self.assertEqual(options.loaded.endpoints, ["tcp:9999:interface=127.0.0.1"])
        self.assertEqual(options.loaded.settings[0].prefix, "/files/")

    def test_listen_repeatable(self) -> None:
        """--listen (or -l) may be given several times and replaces http_host/http_port."""
        options = self.parse("--config", self.config_file(), "--listen", "tcp:0:interface=127.0.0.1",
                             "-l", "unix:" + self.mktemp())
        self.assertEqual(options["listen"][0], "tcp:0:interface=127.0.0.1")
        self.assertEqual(options.loaded.endpoints, options["listen"])
        self.assertEqual(len(options.loaded.endpoints), 2)

    def test_overrides(self) -> None:
        """--cache-dir and --log-level override the file."""
        other = self.mktemp()
        options = self.parse("--config", self.config_file(log_level="info"), "--cache-dir", other,
                             "--log-level", "WARNING")
        self.assertEqual((options.loaded.cache_dir, options.loaded.log_level), (os.path.abspath(other), "warn"))

    def test_config_errors(self) -> None:
        """A bad config file stops the start with one line naming file and key."""
        path = self.config_file(backends=[{"type": "http", "config": {"prefix": "/x/"}}])
        message = self.assertExits("--config", path)
        self.assertEqual(message, f"artifactvault: {path}: backends[0].config.base_url: required")

    def test_bad_yaml(self) -> None:
        """Invalid YAML is one line too."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("backends: [\n")
        self.assertIn(f"{path}: line ", self.assertExits("--config", path))

    def test_missing_file(self) -> None:
        """A config file that does not exist."""
        self.assertIn("cannot read", self.assertExits("--config", self.mktemp()))

    def test_bad_listen(self) -> None:
        """A --listen that is not an endpoint description."""
        message = self.assertExits("--config", self.config_file(), "--listen", "carrier-pigeon:1")
        self.assertIn("--listen 'carrier-pigeon:1'", message)

    def test_bad_log_level(self) -> None:
        """A --log-level that is not a level."""
        self.assertIn("--log-level: must be one of",
                      self.assertExits("--config", self.config_file(), "--log-level", "chatty"))

    def test_unknown_option(self) -> None:
        """An unknown option is a usage error (twistd prints usage)."""
        self.assertRaises(UsageError, self.parse, "--colour")


class ServiceTests(TapMixin, SynchronousTestCase):

    def test_plugin(self) -> None:
        """The plugin provides IServiceMaker and IPlugin and points at our tap."""
        from twisted.plugins import artifactvault_plugin
        maker = artifactvault_plugin.artifactvault
        self.assertTrue(verifyObject(IServiceMaker, maker))
        self.assertTrue(verifyObject(IPlugin, maker))
        self.assertEqual(maker.tapname, "artifactvault")
        self.assertIs(maker.options, tap.Options)

    def test_description_names_every_kind(self) -> None:
        """twistd's plugin list and --help name every ecosystem a backend type serves (they said three of five)."""
        from twisted.plugins import artifactvault_plugin
        for said in (artifactvault_plugin.artifactvault.description, tap.Options.longdesc):
            for kind in ("PyPI", "npm", "OCI", "apt", "HTTP"):
                self.assertIn(kind, said)

    def test_make_service(self) -> None:
        """makeService builds listeners, the janitor, the heap trimmer and the pool closer from parsed options."""
        options = self.parse("--config", self.config_file(), "-l", "tcp:0:interface=127.0.0.1",
                             "-l", r"tcp:0:interface=\:\:1")
        service = tap.makeService(options)
        self.assertIsInstance(service, MultiService)
        listeners = [s for s in service if isinstance(s, StreamServerEndpointService)]
        self.assertEqual(len(listeners), 2)
        self.assertIsInstance(listeners[0].factory, VaultSite)
        self.assertEqual(len([s for s in service if isinstance(s, TimerService)]), 2)
        self.assertTrue(os.path.isdir(os.path.join(self.cache, "tmp")))

    def test_unusable_cache_dir(self) -> None:
        """A cache_dir that cannot be created stops the start with one line."""
        blocker = self.mktemp()
        open(blocker, "w").close()
        options = self.parse("--config", self.config_file(cache_dir=os.path.join(blocker, "cache")))
        error = self.assertRaises(SystemExit, tap.makeService, options)
        self.assertEqual(str(error.code), f"artifactvault: cannot use cache_dir "
                                          f"{os.path.abspath(blocker)}/cache: Not a directory")

    def test_unreachable_s3_store(self) -> None:
        """An S3 store that cannot be reached stops the start with one line naming the bucket (no secret)."""
        self.patch(os, "environ", {**os.environ, "K": "AKIA", "S": "very-secret"})
        closed = support.free_port()
        store = {"type": "s3", "endpoint_url": f"http://127.0.0.1:{closed}", "bucket": "bkt",
                 "access_key_id_env": "K", "secret_access_key_env": "S"}
        error = self.assertRaises(SystemExit, tap.makeService, self.parse("--config", self.config_file(store=store)))
        message = str(error.code)
        self.assertTrue(message.startswith(f"artifactvault: cannot use the S3 store: bucket bkt at "
                                           f"http://127.0.0.1:{closed}: "), message)
        self.assertNotIn("\n", message)
        self.assertNotIn("very-secret", message)

    def test_cache_dir_in_use(self) -> None:
        """A cache_dir another artifactvault holds stops the start with one line naming it and the holder."""
        holder = FileStore(self.cache)
        holder.open()
        self.addCleanup(holder.close)
        error = self.assertRaises(SystemExit, tap.makeService, self.parse("--config", self.config_file()))
        self.assertEqual(str(error.code), f"artifactvault: {os.path.abspath(self.cache)}: "
                                          f"in use by another artifactvault (pid {os.getpid()})")

    def test_interpreter_tuned_at_start(self) -> None:
        """Starting the daemon shortens the GIL switch interval and freezes what exists out of the collector."""
        calls: list[object] = []
        self.patch(service_module.sys, "setswitchinterval", calls.append)
        self.patch(service_module.gc, "freeze", lambda: calls.append("freeze"))
        reactor = ThreadlessReactor()
        service, _ = build(tap.load_config(self.config_file()), reactor, threadpool=reactor)
        self.assertEqual(calls, [])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(calls, [service_module.SWITCH_INTERVAL, "freeze"])

    def test_resolver_installed_at_start(self) -> None:
        """Starting the daemon puts the coalescing resolver in front of the reactor's (artifactvault.resolve)."""
        reactor = ThreadlessReactor()
        original = reactor.nameResolver
        service, _ = build(tap.load_config(self.config_file()), reactor, threadpool=reactor)
        self.assertIs(reactor.nameResolver, original)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIsInstance(reactor.nameResolver, CoalescingResolver)

    def test_store_service(self) -> None:
        """The store's own thread pool runs while the service does; stopping releases the cache's lock."""
        pool = ThreadlessReactor()
        started = []
        self.patch(pool, "start", lambda: started.append("start"))
        self.patch(pool, "stop", lambda: started.append("stop"))
        service, _ = build(tap.load_config(self.config_file()), pool, threadpool=pool)
        service.startService()
        self.assertEqual(started, ["start"])
        self.assertRaises(CacheInUse, FileStore(self.cache).open)
        [store_service] = [s for s in service if isinstance(s, _StoreService)]
        store_service.stopService()
        self.assertEqual(started, ["start", "stop"])
        other = FileStore(self.cache)
        other.open()
        other.close()

    def test_commit_pool(self) -> None:
        """
        Without a test's pool, build() gives the disk store a commit pool of
        one thread (commits one at a time: FileStore.commit), run by the
        store's service with the store's own pool.
        """
        service, _ = build(tap.load_config(self.config_file()), ThreadlessReactor())
        [store_service] = [s for s in service if isinstance(s, _StoreService)]
        names = {pool.name: pool for pool in store_service.threadpools}
        self.assertEqual(sorted(names), ["artifactvault-commit", "artifactvault-store"])
        self.assertEqual(names["artifactvault-commit"].max, COMMIT_THREADS)
        self.assertEqual(COMMIT_THREADS, 1)
        store = store_service.store
        self.assertIsNot(store._run_commit, store._run)
        store.close()

    def test_build_uses_given_reactor(self) -> None:
        """build() listens on, and times with, the reactor it is given (the janitor, the heap trimmer)."""
        reactor = ThreadlessReactor()
        config = tap.load_config(self.config_file(), ["tcp:8123:interface=127.0.0.1"])
        service, root = build(config, reactor, threadpool=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (8123, "127.0.0.1"))
        self.assertIs(factory.resource, root)
        self.assertIs(factory.reactor, reactor)
        self.assertEqual(sorted(call.getTime() for call in reactor.getDelayedCalls()),
                         sorted([reactor.seconds() + SWEEP_INTERVAL, reactor.seconds() + TRIM_INTERVAL]))

    def test_leftover_temp_files_removed(self) -> None:
        """Building the service clears the cache's leftover temp files (and makes the first downloads' ahead)."""
        os.makedirs(os.path.join(self.cache, "tmp"))
        with open(os.path.join(self.cache, "tmp", "partial"), "w") as f:
            f.write("leftover bytes")
        build(tap.load_config(self.config_file()), MemoryReactorClock())
        left = os.listdir(os.path.join(self.cache, "tmp"))
        self.assertNotIn("partial", left)
        self.assertEqual((len(left), support.download_temp_files(self.cache)), (READY, []))

    def test_log_level(self) -> None:
        """The configured level filters our own events."""
        build(tap.load_config(self.config_file(log_level="error")), MemoryReactorClock())
        from twisted.logger import LogLevel
        self.assertEqual(logs._predicate.logLevelForNamespace("artifactvault"), LogLevel.error)


class TacTests(TapMixin, SynchronousTestCase):

    def load_tac(self, config: str):  # type: ignore[no-untyped-def]
        self.patch(os, "environ", {**os.environ, "ARTIFACTVAULT_CONFIG": config})
        return loadApplication(os.path.join(REPO, "vault.tac"), "python")

    def test_tac(self) -> None:
        """vault.tac builds the same service from $ARTIFACTVAULT_CONFIG."""
        application = self.load_tac(self.config_file(http_port=9998))
        from twisted.application.service import IServiceCollection
        [top] = list(IServiceCollection(application))
        [listener] = [s for s in top if isinstance(s, StreamServerEndpointService)]
        self.assertEqual(listener.endpoint._port, 9998)

    def test_tac_bad_config(self) -> None:
        """A bad config stops vault.tac with one line."""
        error = self.assertRaises(SystemExit, self.load_tac, self.config_file(http_port="x"))
        self.assertIn("http_port: must be an integer", str(error.code))
        self.assertNotIn("\n", str(error.code))
