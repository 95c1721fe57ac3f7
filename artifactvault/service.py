# -*- test-case-name: tests.test_tap -*-
"""
Building the running daemon from a validated L{Config}: the store (with its
own thread pool), the shared HTTP client, the backends, the site and its
listeners, the janitor, the heap trimmer (L{artifactvault.memory}).

The store's slow work (fsyncs, directory walks, unlinking evicted files,
parsing large index pages) runs in a L{ThreadPool} of its own, not the
reactor's: that one also resolves host names, which must not wait behind a
long fsync. Its commits run in one more thread, at a lower priority
(L{artifactvault.background}).

Two settings of the interpreter, made when the daemon starts (L{_Interpreter}):
a thread parsing a page of tens of MB holds the GIL whenever the reactor
thread lets go of it, which the reactor does at every system call; getting
it back takes up to the switch interval (5 ms by default), and a request
makes several calls, so the interval is shortened to L{SWITCH_INTERVAL}.
And everything made at start (modules, classes, the service tree) lives as
long as the daemon: it is frozen out of the garbage collector's sight
(C{gc.freeze}), so that a full collection, which the churn of a large parse
makes likely, walks only what was made since and holds everyone for a
fraction of the time. See docs/benchmarks.md, reactor stall.
"""

from __future__ import annotations

import gc
import sys
from functools import partial
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.internet.defer import Deferred, gatherResults
from twisted.web.client import Agent, HTTPConnectionPool

from artifactvault import logs, memory, ops as operations, resolve
from artifactvault.auth.access import has_upstream_credentials
from artifactvault.auth.checkers import make_portal
from artifactvault.auth.gate import Gate
from artifactvault.auth.reload import INTERVAL as RELOAD_INTERVAL, CredentialFiles
from artifactvault.backends import backend_type
from artifactvault.backends.base import BuildContext
from artifactvault.background import BackgroundPool
from artifactvault.cache.s3 import S3Store
from artifactvault.cache.spool import Spool
from artifactvault.cache.store import FileStore
from artifactvault.config import Config
from artifactvault.framing import TolerantClientFactory
from artifactvault.root import Root
from artifactvault.shutdown import InOrder
from artifactvault.site import VaultSite
from artifactvault.upstream import Clients
from artifactvault.vault import Vault

_log = Logger(observer=logs.observer)

#: How often the janitor sweeps orphaned files out of the cache.
SWEEP_INTERVAL = 3600.0
#: Threads for the store's slow work (more would only queue on the disk).
STORE_THREADS = 4
#: Threads for the disk store's commits: one (L{FileStore.commit} says why).
COMMIT_THREADS = 1
#: Connections kept open to the S3 endpoint (hits streaming, parts uploading).
S3_CONNECTIONS = 32
#: Threads for bcrypt checks (each takes tens of ms of CPU; the verified credentials are cached).
AUTH_THREADS = 2
#: Seconds a thread may hold the GIL while another waits for it (sys.setswitchinterval).
SWITCH_INTERVAL = 0.0005


class _QuietPool(HTTPConnectionPool):
    """The upstream connection pool: answers read as nginx reads them (L{artifactvault.framing}), quietly."""

    _factory = TolerantClientFactory


class _Interpreter(Service):
    """Tunes the interpreter for a daemon that parses large pages in threads (see the module's docstring)."""

    def startService(self) -> None:
        super().startService()
        sys.setswitchinterval(SWITCH_INTERVAL)
        gc.freeze()


class _NameResolver(Service):
    """Puts the coalescing resolver in front of the reactor's at start (L{artifactvault.resolve})."""

    def __init__(self, reactor: Any):
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        resolve.install(self.reactor)


class _StoreService(Service):
    """
    Runs the store's thread pools (its slow work, its commits) while the
    daemon runs. At start it writes this process's pid into the cache's
    lock (twistd may have forked since the lock was taken); at stop it lets
    the work under way finish, then releases the lock.
    """

    def __init__(self, store: Any, *threadpools: Any):
        self.store = store
        self.threadpools = threadpools

    def startService(self) -> None:
        super().startService()
        self.store.mark_owner()
        for pool in self.threadpools:
            pool.start()

    def stopService(self) -> Any:
        super().stopService()
        for pool in self.threadpools:
            pool.stop()
        self.store.close()


def _upstream_pool(reactor: Any) -> HTTPConnectionPool:
    """A pool of upstream connections: a few kept open per host for a minute."""
    pool = _QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    pool.cachedConnectionTimeout = 60
    return pool


class _ThreadPoolService(Service):
    """Runs a thread pool while the daemon runs."""

    def __init__(self, threadpool: ThreadPool):
        self.threadpool = threadpool

    def startService(self) -> None:
        super().startService()
        self.threadpool.start()

    def stopService(self) -> Any:
        super().stopService()
        self.threadpool.stop()


def make_gate(config: Config, backends: list[Any], reactor: Any,
              threadpool: Any) -> tuple[Any, Any, CredentialFiles | None]:
    """
    The site's L{Gate} (None without C{auth:}), the thread pool its bcrypt
    checks run in (None if C{threadpool}, given by a test, is used), and the
    watch on its credential files that renews it when they change. Without
    auth, a warning for each backend that fetches with credentials of its own:
    what it fetched, anyone who reaches the port can read.
    """
    auth = config.auth
    if auth is None or not auth.configured:
        for backend, settings in zip(backends, config.settings):
            if has_upstream_credentials(settings):
                _log.warn("backend {name} fetches with credentials, and no auth: is configured: anyone who "
                          "can reach the vault reads what it fetched (configure auth: and access:)",
                          name=backend.name)
        return None, None, None
    own = None
    if threadpool is None:
        # (its own: bcrypt checks must not queue behind the store's fsyncs, nor hold up name resolution)
        threadpool = own = ThreadPool(minthreads=0, maxthreads=AUTH_THREADS, name="artifactvault-auth")

    def run_blocking(f: Any, *args: Any) -> Any:
        return deferToThreadPool(reactor, threadpool, f, *args)

    gate = Gate(auth, make_portal(auth, run_blocking), reactor)
    for backend, access in zip(backends, config.access):
        gate.set_access(backend, access)
        _log.info("backend {name}: access {access}", name=backend.name, access=access.describe())
    files = CredentialFiles(auth, lambda settings: gate.renew(settings, make_portal(settings, run_blocking)))
    return gate, own, files


class _PoolService(Service):
    """Closes the upstream connection pools when the daemon stops."""

    def __init__(self, clients: Clients):
        self.clients = clients

    def stopService(self) -> Any:
        super().stopService()
        return gatherResults([pool.closeCachedConnections() for pool in self.clients.pools])


def make_store(config: Config, reactor: Any, run_blocking: Any, run_commit: Any = None) -> tuple[Any, Any]:
    """
    The L{IStore} the config asks for (and the S3 store's own connection
    pool, or None): the local disk, or a bucket (checked when opened). A
    disk store commits through C{run_commit} (default: C{run_blocking}).
    """
    settings = config.store
    if settings.type == "disk":
        return FileStore(config.cache_dir, run_blocking=run_blocking, max_size=config.max_size,
                         max_object_size=config.max_object_size, run_commit=run_commit), None
    import treq.client
    from artifactvault.s3wire import S3Wire

    pool = _QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = S3_CONNECTIONS
    pool.cachedConnectionTimeout = 60
    http = treq.client.HTTPClient(Agent(reactor, pool=pool))
    wire = S3Wire(http, reactor, run_blocking, settings.endpoint_url, settings.bucket, settings.region,
                  settings.access_key_id, settings.secret_access_key, settings.profile)
    local = None
    if settings.local_cache_dir is not None:
        local = FileStore(settings.local_cache_dir, run_blocking=run_blocking,
                          max_size=settings.local_cache_max_size, max_object_size=config.max_object_size,
                          run_commit=run_commit)
    store = S3Store(wire, Spool(config.cache_dir), reactor, prefix=settings.prefix,
                    part_size=settings.part_size, lease_ttl=settings.lease_ttl, lease_wait=settings.lease_wait,
                    redirect=settings.redirect, max_object_size=config.max_object_size,
                    run_blocking=run_blocking, local=local)
    return store, pool


class _S3Service(Service):
    """At start, probes the bucket for conditional PUTs (leases); at stop, closes its connections."""

    def __init__(self, store: S3Store, pool: HTTPConnectionPool):
        self.store = store
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        Deferred.fromCoroutine(self.store.probe()).addErrback(
            lambda f: _log.warn("cannot probe the S3 store for conditional PUT: {reason}; leases stay on",
                                reason=str(f.value)))

    def stopService(self) -> Any:
        super().stopService()
        return self.pool.closeCachedConnections()


def build(config: Config, reactor: Any = None, threadpool: Any = None) -> tuple[MultiService, Root]:
    """
    The daemon's service tree for C{config}, and its resource root. The
    store's work runs in C{threadpool} (a new L{ThreadPool} if not given;
    tests give one that runs the work at once).
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    logs.set_level(config.log_level)
    clients = Clients(reactor, lambda: _upstream_pool(reactor))
    pools = []  # (a test's threadpool runs the commits too)
    if threadpool is None:
        threadpool = ThreadPool(minthreads=1, maxthreads=STORE_THREADS, name="artifactvault-store")
        # (at a lower priority: nobody waits on a commit, and the reactor must not wait behind one)
        pools.append(BackgroundPool(minthreads=1, maxthreads=COMMIT_THREADS, name="artifactvault-commit"))
    run_blocking = partial(deferToThreadPool, reactor, threadpool)
    run_commit = partial(deferToThreadPool, reactor, pools[0]) if pools else None
    store, s3pool = make_store(config, reactor, run_blocking, run_commit)
    vault = Vault(store, reactor)
    ops = operations.prepare(config, vault)
    context = BuildContext(vault=vault, reactor=reactor, client=clients.get(), clients=clients,
                           offline=config.offline, observe=ops.observe)
    backends = [backend_type(entry.type).build(settings, context)
                for entry, settings in zip(config.backends, config.settings)]
    root = Root(backends)
    site = VaultSite(root, reactor=reactor, limits=config.limits)
    site.gate, auth_pool, credential_files = make_gate(config, backends, reactor, threadpool)
    # Here, so that a bad or busy cache_dir stops the start with a message; after
    # everything else that can refuse the config, so that a refusal leaves no lock held.
    removed = store.open()
    _log.info("cache at {root}: temp files of unfinished downloads removed: {removed}",
              root=store.spool.root, removed=removed)
    drain = operations.install(ops, root, site, backends, reactor)

    top = InOrder()  # (stopped one at a time, the last first: see artifactvault.shutdown)
    _Interpreter().setServiceParent(top)
    _NameResolver(reactor).setServiceParent(top)
    _StoreService(store, threadpool, *pools).setServiceParent(top)  # before the janitor, which uses its pool
    janitor = TimerService(SWEEP_INTERVAL, _Janitor(store))
    janitor.clock = reactor
    janitor.setServiceParent(top)
    trimmer = TimerService(memory.TRIM_INTERVAL, memory.Trimmer(reactor, threadpool, memory.malloc_trim()))
    trimmer.clock = reactor
    trimmer.setServiceParent(top)  # (after the store's pool, whose threads it uses)
    _PoolService(clients).setServiceParent(top)
    if auth_pool is not None:
        _ThreadPoolService(auth_pool).setServiceParent(top)
    if credential_files is not None:
        watch = TimerService(RELOAD_INTERVAL, credential_files)
        watch.clock = reactor
        watch.setServiceParent(top)
    if isinstance(store, S3Store):
        _S3Service(store, s3pool).setServiceParent(top)
    drain.setServiceParent(top)  # (stopped after the listeners, before the pool and the store)
    for listener in listeners(config, site, reactor):
        listener.setServiceParent(top)
    for backend in backends:
        _log.info("backend {name} at {prefix}", name=backend.name, prefix=backend.prefix)
    return top, root


def listeners(config: Config, site: Any, reactor: Any) -> list[Service]:
    """
    A service listening for C{site} on each of the config's endpoints:
    C{tls_cert}/C{tls_key} (without C{--listen}) serve HTTPS on
    C{http_host}/C{http_port} with the whole certificate chain.
    """
    if config.tls is None or config.listen:
        return [strports.service(description, site, reactor=reactor) for description in config.endpoints]
    endpoint = SSL4ServerEndpoint(reactor, config.http_port, config.tls.options(), interface=config.http_host)
    service = StreamServerEndpointService(endpoint, site)
    service._raiseSynchronously = True  # (as strports.service does: a port in use stops the start)
    return [service]


class _Janitor:
    """
    Hourly (and at start): remove orphaned files. At start also learn what
    the cache holds, for eviction down to max_size (which commits then keep up).
    """

    def __init__(self, store: Any):
        self.store = store
        self.scanned = False

    def __call__(self) -> Any:
        d = self.store.sweep()
        d.addCallback(lambda n: n and _log.info("janitor removed {n} orphaned cache files", n=n))
        if not self.scanned:
            self.scanned = True
            d.addCallback(lambda _: self.store.scan())
            d.addCallback(lambda n: _log.info(
                "cache holds {n} entries, {total} bytes (max_size {limit})", n=n,
                total=self.store.stats()["bytes"], limit=self.store.stats()["max_size"] or "unlimited"))
        d.addErrback(lambda f: _log.failure("janitor failed", f))
        return d
