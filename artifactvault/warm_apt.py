# -*- test-case-name: tests.test_warm_apt -*-
"""
``artifactvault warm --apt LINE --deb PKG``: what apt would fetch, fetched
through the vault's apt backend ahead of time (the lines one-line style, or
from a deb822 ``.sources`` file with ``--apt-sources FILE``).

apt itself resolves, as pip does for requirements: the real C{apt-get}, run
as a throwaway machine with nothing installed (its state, lists, archives,
sources and configuration in a temporary directory; the host's apt
configuration, sources and proxies left out) whose only sources are the
given lines, pointed at the vault:

1. C{apt-get update} fetches the release files and the indexes through the
   vault, which keeps them; apt checks their signatures itself
   (C{signed-by=} in the line, else the host's trusted keys); a file it
   could not fetch fails the item (apt would only warn);
2. C{apt-get install --download-only --print-uris} lists every .deb the
   packages need with all their dependencies, with its size, and downloads
   nothing;
3. warm fetches each through the vault itself (counted, with progress) and
   checks its size and its strongest hash in the Packages index apt
   fetched and verified (apt's own listing shows only the MD5 sum).

Nothing here is Twisted: apt-get runs in the caller's thread.
"""

from __future__ import annotations

import itertools
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from artifactvault.backends.apt_meta import MetaError, paragraphs
from artifactvault.warm_client import File, Item, Vault, WarmError, vault_path

#: apt's hash names in --print-uris output, and hashlib's.
HASHES = {"SHA512": "sha512", "SHA256": "sha256", "SHA1": "sha1", "MD5Sum": "md5"}
#: A Packages index's hash fields, strongest first, and hashlib's names.
INDEX_HASHES = (("SHA512", "sha512"), ("SHA256", "sha256"))
#: One line of --print-uris: 'URI' file-name size hash (the hash may be empty).
_URI_LINE = re.compile(r"'(?P<uri>[^'\s]+)' (?P<name>\S+) (?P<size>[0-9]+)(?: (?P<hash>[A-Za-z0-9]+:[0-9a-fA-F]+))? *")
_ARCH = re.compile(r"[a-z0-9][a-z0-9-]*")
_OPTIONS = re.compile(r"\[(?P<options>[^\[\]]*)\]")
#: apt's line for a file it could not fetch (its reason on the next line).
_FETCH_FAILED = re.compile(r"^Err:", re.MULTILINE)
#: apt's closing line (W: or E:) after the lines of the files it could not fetch.
_DOWNLOADS_FAILED = "Some index files failed to download."


@dataclass(frozen=True)
class Source:
    """One sources.list line (one-line style): C{deb [options] URI suite [component ...]}."""

    kind: str  # "deb" or "deb-src"
    options: tuple[str, ...]  # as written, e.g. ("signed-by=/k.gpg", "arch=amd64")
    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self, uri: str) -> str:
        """The line with C{uri} for its URI."""
        options = f"[{' '.join(self.options)}] " if self.options else ""
        return " ".join([f"{self.kind} {options}{uri}", self.suite, *self.components])


def parse_source(line: str) -> Source:
    """A sources.list line, or L{WarmError} saying what is wrong with it."""
    kind, rest = (line.split(None, 1) + ["", ""])[:2]
    if kind not in ("deb", "deb-src"):
        raise WarmError(f"--apt {line!r}: a sources.list line starts with deb or deb-src")
    rest = rest.strip()
    options: tuple[str, ...] = ()
    if rest.startswith("["):
        match = _OPTIONS.match(rest)
        if match is None:
            raise WarmError(f"--apt {line!r}: the options' [ has no ]")
        options = tuple(match["options"].split())
        rest = rest[match.end():]
    words = rest.split()
    if len(words) < 2:
        raise WarmError(f"--apt {line!r}: expected {kind} [options] URI SUITE [COMPONENT ...]")
    uri, suite, components = words[0], words[1], tuple(words[2:])
    if suite.endswith("/") != (not components):
        raise WarmError(f"--apt {line!r}: a suite ending in / (a flat repository) has no components, "
                        f"any other has at least one")
    if any(not name or not value for name, _, value in (o.partition("=") for o in options)):
        raise WarmError(f"--apt {line!r}: options are name=value")
    return Source(kind, options, uri, suite, components)


#: deb822 fields that are no one-line option (nor is any X-… field), and
#: the one-line name of those whose name differs (the others keep theirs,
#: lower-cased).
_DEB822_OWN = ("types", "uris", "suites", "components", "enabled")
_DEB822_NAMES = {"architectures": "arch", "languages": "lang", "targets": "target"}


def deb822_lines(path: str) -> list[str]:
    """
    The sources.list lines a deb822 ``.sources`` file (as in
    ``/etc/apt/sources.list.d/``) stands for: each enabled stanza's types ×
    URIs × suites, with its components, and its other fields as options
    (``Signed-By`` a keyring file; a key written into the file is refused).
    L{WarmError} names the file and the stanza of what is wrong.
    """
    try:
        with open(path, "rb") as f:
            stanzas = [{name: "\n".join(value) for name, value in p.items()} for p in paragraphs(iter(f))]
    except OSError as e:
        raise WarmError(f"--apt-sources {path}: {e.strerror}") from None
    except MetaError as e:
        raise WarmError(f"--apt-sources {path}: not a deb822 sources file: {e}") from None
    lines = []
    for number, stanza in enumerate(stanzas, 1):
        where = f"--apt-sources {path}, stanza {number}"
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        types, uris, suites = (stanza.get(f, "").split() for f in ("types", "uris", "suites"))
        if not types or not uris or not suites:
            raise WarmError(f"{where}: needs Types, URIs and Suites")
        options = []
        for name, value in stanza.items():
            if name in _DEB822_OWN or name.startswith("x-"):  # (X-…: a tool's own field, not apt's)
                continue
            if "\n" in value or "BEGIN PGP" in value:
                raise WarmError(f"{where}: {name} holds a key or several lines; give a keyring file instead")
            if not value.split():
                raise WarmError(f"{where}: {name} is empty")
            options.append(f"{_DEB822_NAMES.get(name, name)}={','.join(value.split())}")
        words = types + uris + suites + stanza.get("components", "").split() + options
        if any(c in word for word in words for c in '[]"'):
            raise WarmError(f"{where}: no brackets or quotes in a source's words")
        opts = f"[{' '.join(options)}] " if options else ""
        for kind, uri, suite in itertools.product(types, uris, suites):
            lines.append(" ".join([f"{kind} {opts}{uri}", suite, *stanza.get("components", "").split()]))
    if not lines:
        raise WarmError(f"--apt-sources {path}: no enabled source in it")
    return lines


def vault_uri(vault: Vault, uri: str) -> str:
    """
    A line's URI as apt should reach it: a path is below the vault's URL;
    a full URL must already be on the vault (without the credentials, which
    apt is given in its auth.conf).
    """
    if uri.startswith("/"):
        return vault.url(uri)
    if urlsplit(uri).scheme in ("http", "https"):
        path = vault_path(vault, uri)
        if path is not None:
            return vault.url(path)
    raise WarmError(f"--apt: {uri} is not on the vault ({vault.base}): give the apt backend's prefix "
                    f"as the URI, like /debian/")


@dataclass(frozen=True)
class Deb:
    """A file apt would download: its URI and what its signed index says it is."""

    uri: str
    name: str
    size: int
    algorithm: str | None
    digest: bytes | None


def parse_print_uris(text: str) -> list[Deb]:
    """The files in C{apt-get --print-uris} output (other lines are left out)."""
    debs = []
    for line in text.splitlines():
        match = _URI_LINE.fullmatch(line)
        if match is None:
            continue
        algorithm = digest = None
        if match["hash"]:
            name, _, hex_digest = match["hash"].partition(":")
            if name in HASHES and len(hex_digest) % 2 == 0:
                algorithm, digest = HASHES[name], bytes.fromhex(hex_digest)
        debs.append(Deb(match["uri"], match["name"], int(match["size"]), algorithm, digest))
    return debs


def machine_architecture() -> str | None:
    """This machine's dpkg architecture, None if dpkg cannot say."""
    try:
        p = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    except OSError:
        return None
    return p.stdout.strip() if p.returncode == 0 and _ARCH.fullmatch(p.stdout.strip()) else None


@dataclass(frozen=True)
class AptRequest:
    """An apt item: the source lines (on the vault), the packages, the architecture."""

    lines: tuple[str, ...]
    packages: tuple[str, ...]
    arch: str | None

    @classmethod
    def make(cls, vault: Vault, lines: list[str], packages: list[str], arch: str | None) -> "AptRequest":
        """The request, every line checked and pointed at the vault; L{WarmError} for what is wrong."""
        if arch is not None and not _ARCH.fullmatch(arch):
            raise WarmError(f"--arch {arch!r} is not a dpkg architecture name")
        for package in packages:
            if not package or package.startswith("-") or any(c.isspace() for c in package):
                raise WarmError(f"--deb {package!r} is not a package name")
        sources = [parse_source(line) for line in lines]
        for line in lines:
            if '"' in line:
                raise WarmError(f"--apt {line!r}: no quotes in a sources.list line")
        return cls(tuple(s.line(vault_uri(vault, s.uri)) for s in sources), tuple(packages), arch)


def apt_config(root: str, arch: str | None, auth: str | None) -> dict[str, str]:
    """
    The apt options of a throwaway machine in C{root}: its own state,
    lists, archives, sources and cache; the host's configuration, sources
    and proxies left out.
    """
    options = {
        "Dir::Etc::Parts": os.path.join(root, "etc", "no-parts"),
        "Dir::Etc::Main": "/dev/null",
        "Dir::Etc::SourceList": os.path.join(root, "etc", "sources.list"),
        "Dir::Etc::SourceParts": "/dev/null",
        "Dir::Etc::netrc": auth or "/dev/null",
        "Dir::Etc::netrcparts": os.path.join(root, "etc", "no-parts"),
        "Dir::State::Lists": os.path.join(root, "lists"),
        "Dir::State::Status": os.path.join(root, "state", "status"),
        "Dir::Cache": os.path.join(root, "cache"),
        "Dir::Cache::Archives": os.path.join(root, "archives"),
        "Acquire::Languages": "none",
        "Acquire::http::Proxy": "DIRECT",
        "Acquire::https::Proxy": "DIRECT",
        # (apt-get update only warns about a file it could not fetch, and exits 0: with this it
        # fails, so that a vault that is down or cannot reach its mirror fails the item; apt
        # before 2.1.16 ignores it, and AptMachine.run reads its Err: lines instead)
        "APT::Update::Error-Mode": "any",
    }
    if os.geteuid() == 0:  # (as root apt would hand downloads to _apt, who cannot write here)
        options["APT::Sandbox::User"] = "root"
    if arch:
        options["APT::Architecture"] = arch
        options["APT::Architectures::"] = arch  # (only it: not the host's foreign ones)
    return options


def _auth_file(root: str, vault: Vault) -> str | None:
    """An auth.conf with the vault's credentials (apt never shows them), None without any."""
    parts = urlsplit(vault.url_with_credentials("/"))
    if parts.username is None:
        return None
    login, password = unquote(parts.username), unquote(parts.password or "")
    if any(c.isspace() for c in login + password) or not password:
        # (apt's auth.conf is netrc: words split on blanks, no quoting, no empty word)
        raise WarmError("--apt: apt cannot be given a user name or password that is empty or has blanks "
                        "(its auth.conf has no quoting): use credentials without them for warm")
    path = os.path.join(root, "etc", "auth.conf")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        # (with the scheme: apt gives an entry without one to https only)
        f.write(f"machine {vault.base} login {login} password {password}\n")
    return path


class AptMachine:
    """apt-get as a machine with nothing installed, in C{root}, with C{lines} for its sources."""

    def __init__(self, root: str, vault: Vault, request: AptRequest):
        self.apt_get = shutil.which("apt-get")
        if self.apt_get is None:
            raise WarmError("--apt needs apt-get, and this machine has none: run warm on a Debian or "
                            "Ubuntu machine (or container) that reaches the vault")
        for d in ("lists/partial", "archives/partial", "etc/no-parts", "state", "cache"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        open(os.path.join(root, "state", "status"), "w").close()
        with open(os.path.join(root, "etc", "sources.list"), "w") as f:
            f.write("\n".join(request.lines) + "\n")
        arch = request.arch or machine_architecture()
        self.config = os.path.join(root, "etc", "apt.conf")
        with open(self.config, "w") as f:
            for name, value in apt_config(root, arch, _auth_file(root, vault)).items():
                f.write(f'{name} "{value}";\n')
        self.root = root

    def run(self, *args: str) -> str:
        """
        apt-get C{args} (C{args[1]} its command): its output; L{WarmError}
        with apt's errors if it fails, or if it says it could not fetch a
        file (an C{Err:} line), which an apt older than 2.1.16 does with
        exit status 0 (see L{apt_config}): an index the update could not
        fetch is one the vault does not have for going offline.
        """
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(APT_CONFIG=self.config, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        p = subprocess.run([self.apt_get, *args], env=env, capture_output=True, text=True,  # type: ignore[list-item]
                           cwd=self.root, stdin=subprocess.DEVNULL)
        if p.returncode != 0 or _FETCH_FAILED.search(p.stdout):
            raise WarmError(f"apt-get {args[1]} failed: "
                            f"{apt_errors(p.stdout + p.stderr) or f'exit status {p.returncode}'}")
        return p.stdout


def apt_errors(output: str) -> str:
    """
    Why apt failed, in one line: its last errors (E:), the ones that made
    it fail; without any (an apt that only warned), its last Err: and W:
    lines; without those, its last line. Each is said once, its blanks
    squeezed, and apt's closing "Some index files failed to download" is
    left out: it repeats the lines before it, and its "They have been
    ignored" is not so here.
    """
    lines = [" ".join(line.split()) for line in output.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(("E:", "Err:", "W:")) and _DOWNLOADS_FAILED not in line]
    errors = [line for line in said if line.startswith("E:")] or said or lines
    return " | ".join(list(dict.fromkeys(errors))[-3:])[:600]


def apt_files(vault: Vault, request: AptRequest, item: Item) -> list[File]:
    """
    Run apt-get update (the indexes, through the vault) and resolve the
    packages: the .deb files, with their sizes and hashes, as vault paths.
    """
    with tempfile.TemporaryDirectory(prefix="av-warm-apt-") as root:
        machine = AptMachine(root, vault, request)
        out = machine.run("-q", "update")
        got = sum(line.startswith("Get:") for line in out.splitlines())
        item.notes.append(f"apt-get update: {got} index file{'s' if got != 1 else ''} through the vault")
        if not request.packages:
            return []
        out = machine.run("-qq", "install", "--download-only", "--print-uris", "-y", *request.packages)
        debs = parse_print_uris(out)
        digests = index_digests(os.path.join(root, "lists"), debs)
    files = []
    for deb in debs:
        path = vault_path(vault, deb.uri)
        if path is None:
            raise WarmError(f"apt would fetch {deb.name} from outside the vault: {deb.uri}")
        algorithm, digest = digests.get(deb.uri, (deb.algorithm, deb.digest))
        files.append(File(path, deb.size, algorithm, digest))
    return files


def index_digests(lists: str, debs: list[Deb]) -> dict[str, tuple[str, bytes]]:
    """
    The strongest digest of each of C{debs} (by URI) in the Packages
    indexes in C{lists} (apt's lists directory: the indexes it checked
    against the signed release, uncompressed). A record is a deb's when its
    C{Filename} ends the deb's URI path; read line by line (Debian's main
    index is tens of MB), keeping only the records of the wanted files.
    """
    wanted: dict[str, list[Deb]] = {}
    for deb in debs:
        wanted.setdefault(posixpath.basename(unquote(urlsplit(deb.uri).path)), []).append(deb)
    found: dict[str, tuple[str, bytes]] = {}
    for name in sorted(os.listdir(lists)) if os.path.isdir(lists) else []:
        if not name.endswith("_Packages"):
            continue
        with open(os.path.join(lists, name), encoding="utf-8", errors="replace") as f:
            record: dict[str, str] = {}
            for line in itertools.chain(f, [""]):
                if line.strip():
                    field, sep, value = line.partition(":")
                    if sep and not line[0].isspace():
                        record[field] = value.strip()
                    continue
                _match(record, wanted, found)
                record = {}
    return found


def _match(record: dict[str, str], wanted: dict[str, list[Deb]], found: dict[str, tuple[str, bytes]]) -> None:
    filename = record.get("Filename", "")
    for deb in wanted.get(posixpath.basename(filename), []):
        if not unquote(urlsplit(deb.uri).path).endswith("/" + filename):
            continue
        for field, algorithm in INDEX_HASHES:
            try:
                found[deb.uri] = (algorithm, bytes.fromhex(record[field]))
                break
            except (KeyError, ValueError):
                continue
