# -*- test-case-name: tests.test_tap -*-
"""
``twistd artifactvault``: command-line options and L{makeService}.

A bad option or config ends the start with one line on stderr and exit
status 1: the config is loaded and checked in L{Options.postOptions}, before
twistd sets up logging or daemonises.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.python import usage

from artifactvault import DESCRIPTION
from artifactvault import config as configmod
from artifactvault.backends import parse_backend
from artifactvault import logs
from artifactvault.cache.interface import StoreUnavailable
from artifactvault.cache.store import CacheInUse
from artifactvault.startup import CacheDirUnusable
from artifactvault.tls import check_listen


def _fail(message: str) -> None:
    """Stop with one line, not twistd's usage text or a traceback."""
    raise SystemExit(f"artifactvault: {message}")


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen STRPORT ...] [--cache-dir DIR] [--log-level LEVEL]"
    longdesc = f"{DESCRIPTION} Without --config it runs on an embedded default (127.0.0.1:8080)."
    optParameters = [
        ["config", "c", None, "YAML config file (default: the embedded default config)."],
        ["cache-dir", None, None, "Cache directory (overrides cache_dir)."],
        ["log-level", None, None, "debug, info, warn, error or critical (overrides log_level)."],
        ["log-format", None, "text", "text (one line an event) or json (one JSON object a line, "
                                     "to twistd's --logfile or standard output)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.loaded: configmod.Config | None = None

    def opt_listen(self, description: str) -> None:
        """A strports description to listen on, e.g. tcp:8080:interface=127.0.0.1 (repeatable;
        overrides http_host/http_port)."""
        self["listen"].append(description)

    opt_l = opt_listen

    def postOptions(self) -> None:
        try:
            self.loaded = load_config(self["config"], self["listen"], self["cache-dir"],
                                      self["log-level"])
        except configmod.ConfigError as e:
            _fail(str(e))
        if self["log-format"] not in ("text", "json"):
            _fail(f"--log-format: must be text or json, not {self['log-format']!r}")
        parent = getattr(self, "parent", None)
        if parent is None:
            return
        # twistd reads its --logger (a name) after all options are parsed: ours
        # write where twistd would have (logs.log_file); the text one (twistd's
        # lines, made cheaper) unless the operator chose a logger of their own, or syslog
        logs.target, logs.nodaemon = parent.get("logfile"), bool(parent.get("nodaemon"))
        if self["log-format"] == "json":
            parent["logger"] = "artifactvault.logs.json_lines"
        elif not parent.get("logger") and not parent.get("syslog"):
            parent["logger"] = "artifactvault.logs.text_lines"


def load_config(path: str | None, listen: list[str] = (), cache_dir: str | None = None,
                log_level: str | None = None) -> configmod.Config:
    """The config file (or embedded default) with command-line overrides applied."""
    config = configmod.load(path, parse_backend)
    from twisted.internet import reactor
    for description in listen:
        try:
            check_listen(description)  # (its files: Twisted's own parser would raise a traceback)
            endpoints.serverFromString(reactor, description)
        except (ValueError, TypeError, KeyError) as e:
            raise configmod.ConfigError(f"--listen {description!r}: {e}") from None
    config.listen = list(listen)
    if cache_dir:
        config.cache_dir = os.path.abspath(cache_dir)
    if log_level:
        level = log_level.lower()
        if level == "warning":
            level = "warn"
        if level not in configmod.LOG_LEVELS:
            raise configmod.ConfigError(
                f"--log-level: must be one of {', '.join(configmod.LOG_LEVELS)}")
        config.log_level = level
    return config


def makeService(options: Any) -> IService:
    from artifactvault.service import build
    loaded = options.loaded if isinstance(options, Options) else None
    if loaded is None:
        loaded = load_config(options.get("config"), options.get("listen", []),
                             options.get("cache-dir"), options.get("log-level"))
    try:
        service, _root = build(loaded)
    except (CacheInUse, CacheDirUnusable) as e:  # a second daemon on one cache_dir would delete the
        _fail(str(e))                             # first one's downloads; a full disk fails every one
    except StoreUnavailable as e:  # a bucket that is not there, or cannot be written
        _fail(f"cannot use the S3 store: {e}")
    except OSError as e:
        _fail(f"cannot use cache_dir {loaded.cache_dir}: {e.strerror}")
    except configmod.ConfigError as e:  # a combination of backends only building can judge
        _fail(str(e))
    return service
