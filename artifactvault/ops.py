# -*- test-case-name: tests.test_metrics,tests.test_status,tests.test_admin -*-
"""
The operator's side of a daemon, put together: ``/-/metrics``,
``/-/status`` and ``/-/status.json``, ``/-/admin/``, the graceful stop and
the start-up checks. L{artifactvault.service.build} calls L{prepare} before
it builds the backends (their upstreams need their observers) and
L{install} once the site exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from artifactvault import logs
from artifactvault.admin import Admin, AdminResource
from artifactvault.auth.gate import Guarded
from artifactvault.metrics import Metrics, MetricsPage
from artifactvault.shutdown import Drain
from artifactvault.startup import check_cache_dir
from artifactvault.status import StatusJson, StatusPage, StatusSource

_log = Logger(observer=logs.observer)


@dataclass
class Operations:
    """What L{prepare} made: the metrics (None when C{metrics: false}), and the status page's source."""

    config: Any
    vault: Any
    metrics: Metrics | None
    status: StatusSource | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def observe(self) -> Any:
        """For L{artifactvault.backends.base.BuildContext}: each backend's upstream observer, by prefix."""
        return self.metrics.observe if self.metrics is not None else None


def prepare(config: Any, vault: Any) -> Operations:
    metrics = Metrics(vault, cache_dir=config.cache_dir) if config.metrics else None
    return Operations(config, vault, metrics)


def install(ops: Operations, root: Any, site: Any, backends: list[Any], reactor: Any) -> Service:
    """
    Check the (opened) cache directory (L{artifactvault.startup.CacheDirUnusable}
    stops the start), mount the pages under ``/-/``, and return the
    service that drains answers and downloads at stop (see
    L{artifactvault.shutdown}).
    """
    store = ops.vault.store
    ops.warnings = check_cache_dir(store.spool.root, store.spool.tmp_dir)
    for warning in ops.warnings:
        _log.warn("{warning}", warning=warning)
    pages = root.children[b"-"]
    gate = getattr(site, "gate", None)

    def put(name: bytes, page: Any) -> None:
        # (behind the gate when auth is configured: auth.pages says who may look)
        pages.putChild(name, Guarded(page, gate.settings.pages) if gate is not None else page)

    if ops.metrics is not None:
        for backend in backends:
            ops.metrics.add_backend(backend)
        site.observers.append(ops.metrics)
        ops.metrics.gate = gate
        put(b"metrics", MetricsPage(ops.metrics))
    ops.status = StatusSource(ops.vault, backends, ops.metrics, offline=ops.config.offline)
    ops.status.warnings = ops.warnings
    put(b"status", StatusPage())
    put(b"status.json", StatusJson(ops.status))
    if ops.config.admin_token:
        pages.putChild(b"admin", AdminResource(Admin(ops.vault, backends), ops.config.admin_token))
    return Drain(site, ops.vault, reactor, ops.config.shutdown_timeout)
