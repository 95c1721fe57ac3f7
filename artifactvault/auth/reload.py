# -*- test-case-name: tests.test_auth_reload -*-
"""
The credential files read again when they change, while the daemon runs.

An operator revokes a token or adds a user by editing the htpasswd or
tokens file (or a secret mounted over it is replaced). Read only at start,
a revoked token went on working until the next restart, and the logins the
gate had verified stayed good for L{artifactvault.auth.checkers.VerifiedCache.ttl}
after that. Here each file is looked at (read, following a symlink, as
mounted secrets are swapped) every L{INTERVAL} seconds; when either changed
(a small file read, its digest compared), both are parsed again, and,
if they read well, the gate takes them at once and forgets every login it
had verified. A file that no longer reads (a line the vault cannot use, the
file gone or unreadable) is logged with the file and the line, once per
change, and the credentials read before stay in force: a half-written file
must not lock every client out, nor let anyone in.

The groups are the config's, read at start: a user auth.groups names
who is no longer in the files is named in a warning, and cannot log in.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, Callable

from twisted.logger import Logger

from artifactvault import logs
from artifactvault.auth.access import AuthSettings, read_credentials
from artifactvault.config import ConfigError

_log = Logger(observer=logs.observer)

#: Seconds between looks at the credential files.
INTERVAL = 5.0


def _signature(path: str) -> bytes | str:
    """
    What says a file changed: its digest (its time stamp and size could
    miss a second edit within one tick of the file system's clock that
    kept the size); the error's words if it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError as e:
        return e.strerror or str(e)


class CredentialFiles:
    """
    The C{auth:} section's files, looked at each time it is called (a
    L{twisted.application.internet.TimerService} calls it every
    L{INTERVAL} seconds): on a change, read again and handed to C{apply}
    as new L{AuthSettings} (the same but for the users and tokens).
    """

    def __init__(self, settings: AuthSettings, apply: Callable[[AuthSettings], None]):
        self.settings = settings
        self._apply = apply
        self._paths = [f[0] for f in (settings.htpasswd_file, settings.tokens_file) if f is not None]
        self._seen = self._signatures()
        #: The signatures whose files did not read (logged once, tried again on the next change).
        self._refused: list[Any] | None = None
        try:  # (an edit since C{settings} read them, before the digests above: taken at the first look)
            edited = read_credentials(settings) != (settings.htpasswd, settings.tokens)
        except ConfigError:
            edited = True
        if edited:
            self._seen = []

    def _signatures(self) -> list[Any]:
        return [_signature(path) for path in self._paths]

    def __call__(self) -> bool:
        """Look at the files; read them again if they changed. Whether new credentials were taken."""
        now = self._signatures()
        if now == self._seen or now == self._refused:
            return False
        try:
            settings = self._reread()
        except ConfigError as e:
            self._refused = now
            _log.error("credential files changed but cannot be used, so the ones read before stay: {reason}",
                       reason=str(e))
            return False
        self._seen, self._refused = now, None
        self.settings = settings
        self._apply(settings)
        missing = sorted({m for members in settings.groups.values() for m in members} - settings.users)
        _log.info("credential files read again: {users} users, {tokens} tokens; the logins verified "
                  "before were forgotten", users=len(settings.users), tokens=len(settings.tokens))
        if missing:
            _log.warn("users named in auth.groups are no longer in the credential files (they cannot log "
                      "in): {names}", names=", ".join(missing))
        return True

    def _reread(self) -> AuthSettings:
        htpasswd, tokens = read_credentials(self.settings)
        return replace(self.settings, htpasswd=htpasswd, tokens=tokens)
