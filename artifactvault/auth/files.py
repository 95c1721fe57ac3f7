# -*- test-case-name: tests.test_auth_files -*-
"""
The two credential files the vault reads at start: an htpasswd file and a
tokens file. A line the vault cannot use stops the start with one line
naming the file and the line (a L{ConfigError}), never with a traceback and
never quoting a secret.

- htpasswd (``htpasswd -B`` writes it): ``user:hash`` a line; only bcrypt
  hashes (``$2y$``, ``$2b$``, ``$2a$``) are accepted. The other schemes
  htpasswd knows (apr1-MD5, ``{SHA}``, crypt, plain text) are fast to
  brute-force or need code nobody should trust now: they are refused, with
  the scheme named, rather than silently never matching.
- tokens file: ``user:token`` a line, the token at least L{MIN_TOKEN}
  characters; one user may have several tokens, a token belongs to one user.

In both, blank lines and lines starting with ``#`` are ignored, and a user
name is 1 to L{MAX_NAME} printable characters without ``:`` or spaces.
"""

from __future__ import annotations

import re

from artifactvault.config import ConfigError

#: The shortest token accepted (as for the admin token: ``openssl rand -hex 32`` makes 64).
MIN_TOKEN = 16
#: The longest user name accepted.
MAX_NAME = 128
#: A bcrypt hash as htpasswd -B (and the bcrypt package) write it: version, cost, 22+31 characters.
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_NAME = re.compile(r"[!-9;-~\u00a0-\U0010ffff]{1,%d}" % MAX_NAME)  # printable, no ':' nor space


def _scheme(hashed: str) -> str:
    """What an htpasswd entry that is not bcrypt is, in words."""
    if hashed.startswith("$2"):
        return "a malformed bcrypt hash"
    if hashed.startswith("$apr1$"):
        return "apr1-MD5 (htpasswd -m)"
    if hashed.startswith("{SHA}"):
        return "SHA-1 (htpasswd -s)"
    if re.fullmatch(r"\$(1|5|6)\$.*", hashed):
        return "crypt(3) MD5/SHA (htpasswd -2/-5)"
    if re.fullmatch(r"[./A-Za-z0-9]{13}", hashed):
        return "DES crypt (htpasswd -d)"
    return "plain text or an unknown scheme (htpasswd -p)"


def _lines(text: str) -> "list[tuple[int, str]]":
    """The numbered lines that hold an entry (not blank, not a comment)."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def _entry(source: str, number: int, line: str, what: str) -> tuple[str, str]:
    user, sep, rest = line.partition(":")
    if not sep:
        raise ConfigError(f"{source}: line {number}: not a {what} line (expected user:{what.split()[-1]})")
    if not _NAME.fullmatch(user):
        raise ConfigError(f"{source}: line {number}: the user name must be 1-{MAX_NAME} printable "
                          f"characters without spaces or ':'")
    return user, rest


def parse_htpasswd(text: str, source: str) -> dict[str, bytes]:
    """The users of an htpasswd file and their bcrypt hashes; L{ConfigError} for a line that is not one."""
    users: dict[str, bytes] = {}
    for number, line in _lines(text):
        user, hashed = _entry(source, number, line, "htpasswd user:hash")
        if not _BCRYPT.fullmatch(hashed):
            raise ConfigError(f"{source}: line {number}: user {user}: only bcrypt entries are supported "
                              f"(make them with htpasswd -B); this one is {_scheme(hashed)}")
        if not 4 <= int(_BCRYPT.fullmatch(hashed).group(1)) <= 31:  # type: ignore[union-attr]
            raise ConfigError(f"{source}: line {number}: user {user}: bcrypt cost must be 4 to 31")
        if user in users:
            raise ConfigError(f"{source}: line {number}: user {user} is given twice")
        users[user] = hashed.encode("ascii")
    return users


def parse_tokens(text: str, source: str) -> list[tuple[str, bytes]]:
    """The (user, token) pairs of a tokens file; L{ConfigError} for a line that is not one."""
    tokens: list[tuple[str, bytes]] = []
    seen: dict[bytes, str] = {}
    for number, line in _lines(text):
        user, token = _entry(source, number, line, "tokens user:token")
        raw = token.encode("utf-8")
        if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
            raise ConfigError(f"{source}: line {number}: user {user}: a token must be at least {MIN_TOKEN} "
                              f"characters without spaces (make one with: openssl rand -hex 32)")
        if raw in seen:
            raise ConfigError(f"{source}: line {number}: user {user}: this token is already "
                              f"{seen[raw]}'s (a token names one user)")
        seen[raw] = user
        tokens.append((user, raw))
    return tokens


def read_text(path: str, key: str, config_source: str) -> str:
    """The text of a credential file named by C{key}; L{ConfigError} if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{config_source}: {key}: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{config_source}: {key}: {path} is not UTF-8 text (byte {e.start})") from None
