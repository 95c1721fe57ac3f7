# -*- test-case-name: tests.test_auth_access -*-
"""
Who may read a backend, and the ``auth:`` section that says who is who.

``auth:`` (top level) names the credential files (``htpasswd``,
``tokens_file``) and optionally ``groups:``, a mapping of group names to
lists of user names. A backend's ``access:`` (inside its ``config:``) is
``anonymous``, ``authenticated`` (any known user), or a list of names, each
a user or a group (a name may not be both). Without ``access:`` a backend
is ``anonymous``, except that one with upstream credentials of its own
(``username``/``password``, ``token`` or extra ``headers``) is
``authenticated`` when auth is configured: what it fetched with them is
not for everyone who can reach the port.

``auth.pages`` says the same for ``/-/metrics``, ``/-/status`` and
``/-/status.json`` (default ``authenticated``: they name upstreams, paths
and sizes); ``/-/health`` is always open, ``/-/admin/`` always needs the
admin token.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from zope.interface import Attribute, Interface, implementer

from artifactvault.auth.files import parse_htpasswd, parse_tokens, read_text
from artifactvault.config import ConfigError, Section

DEFAULT_REALM = "artifactvault"
#: Failed logins from one address within L{DEFAULT_FAILURE_WINDOW} before
#: its further unverified attempts get 429.
DEFAULT_MAX_FAILURES = 10
DEFAULT_FAILURE_WINDOW = 60.0


class IPrincipal(Interface):
    """Who a request comes from: the avatar the realm gives for a login."""

    name = Attribute("The user name, or None for an anonymous client.")
    groups = Attribute("The names of the groups the user is in (a frozenset).")


@implementer(IPrincipal)
@dataclass(frozen=True)
class Principal:
    name: str | None = None
    groups: frozenset[str] = frozenset()

    @property
    def anonymous(self) -> bool:
        return self.name is None


ANONYMOUS = Principal()


class Kind(enum.Enum):
    ANONYMOUS = "anonymous"
    AUTHENTICATED = "authenticated"
    LISTED = "listed"


@dataclass(frozen=True)
class Access:
    """Who may read a backend (see the module doc)."""

    kind: Kind
    names: frozenset[str] = frozenset()

    @property
    def open(self) -> bool:
        return self.kind is Kind.ANONYMOUS

    def allows(self, principal: Principal) -> bool:
        if self.kind is Kind.ANONYMOUS:
            return True
        if principal.anonymous:
            return False
        return self.kind is Kind.AUTHENTICATED or principal.name in self.names or \
            bool(principal.groups & self.names)

    def describe(self) -> str:
        return self.kind.value if self.kind is not Kind.LISTED else ", ".join(sorted(self.names))


OPEN = Access(Kind.ANONYMOUS)
AUTHENTICATED = Access(Kind.AUTHENTICATED)


@dataclass(repr=False)
class AuthSettings:
    """The ``auth:`` section, its files read. C{configured} is False without one."""

    htpasswd: dict[str, bytes] = field(default_factory=dict)
    tokens: list[tuple[str, bytes]] = field(default_factory=list)
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    realm: str = DEFAULT_REALM
    pages: Access = AUTHENTICATED
    max_failures: int = DEFAULT_MAX_FAILURES
    failure_window: float = DEFAULT_FAILURE_WINDOW
    configured: bool = False
    #: The credential files, (path, the config key that names it), read again
    #: when they change (L{artifactvault.auth.reload}); and the config's file.
    htpasswd_file: tuple[str, str] | None = None
    tokens_file: tuple[str, str] | None = None
    source: str = "<config>"

    def __repr__(self) -> str:  # (never the hashes or tokens)
        return f"AuthSettings(users={len(self.users)}, tokens={len(self.tokens)}, groups={sorted(self.groups)})"

    @property
    def users(self) -> set[str]:
        return set(self.htpasswd) | {user for user, _ in self.tokens}

    def groups_of(self, user: str) -> frozenset[str]:
        return frozenset(g for g, members in self.groups.items() if user in members)


def parse_auth(top: Section) -> AuthSettings:
    """The top-level ``auth:`` section (an unconfigured L{AuthSettings} without one)."""
    if top._get("auth", None) is None:
        return AuthSettings()
    section = top.section("auth")
    settings = AuthSettings(configured=True, source=top.source)
    htpasswd = section.str("htpasswd", None)
    tokens_file = section.str("tokens_file", None)
    if htpasswd is None and tokens_file is None:
        raise section.error(None, "give htpasswd, tokens_file or both")
    if htpasswd is not None:
        settings.htpasswd_file = (_path(htpasswd, top.source), section.where("htpasswd"))
    if tokens_file is not None:
        settings.tokens_file = (_path(tokens_file, top.source), section.where("tokens_file"))
    settings.htpasswd, settings.tokens = read_credentials(settings)
    users = settings.users
    groups = section.mapping("groups", {})
    for name, members in groups.items():
        where = f"groups.{name}"
        if not isinstance(name, str) or not name:
            raise section.error("groups", f"{name!r} is not a group name")
        clash = name_clash([name], users)
        if clash:
            raise section.error(where, clash)
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise section.error(where, "must be a list of user names")
        unknown = [m for m in members if m not in users]
        if unknown:
            raise section.error(where, f"no such user: {', '.join(unknown)}")
        settings.groups[name] = frozenset(members)
    settings.realm = section.str("realm", DEFAULT_REALM)
    if not settings.realm or '"' in settings.realm or "\\" in settings.realm or not settings.realm.isprintable():
        raise section.error("realm", "must be printable, without quotes or backslashes")
    settings.max_failures = section.int("max_failures", DEFAULT_MAX_FAILURES, minimum=1)
    settings.failure_window = section.seconds("failure_window", DEFAULT_FAILURE_WINDOW)
    settings.pages = parse_access(section, "pages", settings, AUTHENTICATED)
    section.check_unknown()
    return settings


def read_credentials(settings: AuthSettings) -> tuple[dict[str, bytes], list[tuple[str, bytes]]]:
    """
    The users of C{settings}' htpasswd file and the tokens of its tokens
    file, read now (at start, and again when they change); L{ConfigError},
    naming the file and the line, for one that cannot be used.
    """
    htpasswd: dict[str, bytes] = {}
    tokens: list[tuple[str, bytes]] = []
    if settings.htpasswd_file is not None:
        path, key = settings.htpasswd_file
        htpasswd = parse_htpasswd(read_text(path, key, settings.source), path)
    if settings.tokens_file is not None:
        path, key = settings.tokens_file
        tokens = parse_tokens(read_text(path, key, settings.source), path)
    clash = name_clash(settings.groups, set(htpasswd) | {user for user, _ in tokens})
    if clash:
        raise ConfigError(f"{settings.source}: auth.groups: {clash}")
    return htpasswd, tokens


def name_clash(groups: Iterable[str], users: set[str]) -> str | None:
    """
    The group names that are users' names too, in words (an C{access:}
    list naming one could not say which it means); None if there are none.
    """
    both = sorted(set(groups) & users)
    return f"{', '.join(both)} is a user's name too: a name in access: must say one thing" if both else None


def _path(value: str, source: str) -> str:
    """A file named in the config: relative to the config file's directory."""
    value = os.path.expanduser(value)
    if os.path.isabs(value) or source.startswith("<"):
        return value
    return os.path.join(os.path.dirname(os.path.abspath(source)), value)


def parse_access(section: Section, key: str, auth: AuthSettings, default: Access) -> Access:
    """A backend's C{access} (or C{auth.pages}); C{default} when it is not given."""
    value = section._get(key, None)
    if value is None:
        return default
    if value in ("anonymous", "authenticated"):
        if value == "authenticated" and not auth.configured:
            raise _needs_auth(section, key)
        return Access(Kind(value))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise section.error(key, "must be anonymous, authenticated, or a list of user and group names")
    if not auth.configured:
        raise _needs_auth(section, key)
    known = auth.users | set(auth.groups)
    unknown = [name for name in value if name not in known]
    if unknown:
        raise section.error(key, f"no such user or group: {', '.join(unknown)}")
    return Access(Kind.LISTED, frozenset(value))


def _needs_auth(section: Section, key: str) -> ConfigError:
    return section.error(key, "needs auth: (a top-level auth: section with htpasswd or tokens_file)")


def has_upstream_credentials(settings: Any) -> bool:
    """Whether a backend fetches with credentials of its own (what it fetched is not for everyone)."""
    return any(getattr(settings, name, None) for name in ("username", "password", "token", "headers"))


def default_access(settings: Any, auth: AuthSettings) -> Access:
    """A backend's access without an C{access:} key (see the module doc)."""
    return AUTHENTICATED if auth.configured and has_upstream_credentials(settings) else OPEN
