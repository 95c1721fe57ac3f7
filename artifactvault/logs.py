# -*- test-case-name: tests.test_tap -*-
"""
Log level for our own events.

twistd owns log output; our modules log through L{observer}, which drops
events below the configured level before they reach twistd's observers.
Usage in a module: ``_log = Logger(observer=logs.observer)``.
"""

from __future__ import annotations

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                            globalLogPublisher)

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def set_level(name: str) -> None:
    """Set the lowest level logged: debug, info, warn, error or critical."""
    _predicate.defaultLogLevel = LogLevel.levelWithName(name)
