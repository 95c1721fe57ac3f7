# -*- test-case-name: tests.test_warm -*-
"""
``artifactvault warm``: fill a vault ahead of time, through the vault itself.

Items, in any mix (each option repeatable, or one a line of C{--from FILE}):

- ``-r requirements.txt``: resolved by pip through the vault's PyPI backend
  (``pip install --dry-run --ignore-installed --report``, with the vault as
  its only index), for this interpreter's platform or, with ``--platform``
  and ``--python-version``, for others (binary wheels only, as pip needs
  for a foreign platform); every file of the resolution is then fetched
  whole. pip itself fetched the pages and metadata it read, through the
  vault, so those are cached too;
- ``--image dockerhub/library/alpine:3.20`` (the backend's prefix name,
  the repository, a tag or ``@sha256:…``): the index, every platform's
  manifest, each config and layer;
- ``--url /files/path``: one file;
- ``--apt 'deb [signed-by=KEY] /debian/ bookworm main' --deb PKG`` (or
  ``--apt-sources debian.sources``, the deb822 form): resolved by the real
  apt-get through the vault's apt backend (L{artifactvault.warm_apt}): the
  indexes, then every .deb the packages need with their dependencies, as
  on a machine with nothing installed;
- ``--npm-lock package-lock.json``: every registry package of the lock,
  its packument and its tarball, through the vault's npm backend
  (L{artifactvault.warm_npm}).

Files are fetched concurrently (C{--jobs}), each read to its end and
dropped: the vault keeps it. Its C{X-Cache} says whether it was cached
already. Where the item says what a file must be (a blob's digest and size,
a .deb's size and hash from apt's index, a tarball's integrity from the
lock, a wheel's hash from pip's report), the bytes are checked on the way:
a mismatch fails the item. A progress bar per item and an overall one
(C{rich}) when standard error is a terminal, nothing while running
otherwise; a summary table at the end; exit status 1 when anything failed.

Nothing here is Twisted: it is a client, run once, with a thread pool.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from artifactvault import warm_apt, warm_npm
from artifactvault.warm_client import File, Item, Vault, WarmError, fetch_file, vault_path

__all__ = ["File", "Item", "Vault", "WarmError", "fetch_file", "main", "vault_path"]

#: What a registry is asked for a manifest: every form, index or single.
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
#: What the common clients send for a manifest: the vault keeps what a tag
#: points at per class of Accept (a client that admits fewer types may get
#: another manifest), so a tag is warmed for each of these.
CLIENT_ACCEPTS = (
    MANIFEST_ACCEPT,
    # containers/image: skopeo, podman, buildah, cri-o
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json",
    # containerd: docker 23+, nerdctl, kubernetes
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*",
    # docker's own puller
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEXES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
#: The largest manifest read into memory.
MAX_MANIFEST = 4 * 1024 * 1024


# -- planning: what files an item is ---------------------------------------------

def requirement_files(vault: Vault, pypi: str, requirements: str, targets: list[tuple[str | None, str | None]],
                      pip: list[str]) -> list[File]:
    """
    Every file pip would fetch to install C{requirements} for each target
    (platform, python version; (None, None): this one), resolved by pip
    with the vault's PyPI backend as its only index; with the sha256 pip's
    report gives.
    """
    index = vault.url_with_credentials(pypi)
    files: list[File] = []
    for platform, python_version in targets:
        with tempfile.TemporaryDirectory(prefix="av-warm-") as tmp:
            report = os.path.join(tmp, "report.json")
            args = pip + ["install", "--dry-run", "--ignore-installed", "--quiet", "--isolated",
                          "--disable-pip-version-check", "--no-input", "--report", report,
                          "--index-url", index, "-r", requirements]
            if platform or python_version:
                args += ["--only-binary=:all:"]
                if platform:
                    args += ["--platform", platform]
                if python_version:
                    args += ["--python-version", python_version]
            env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
            p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp)
            if p.returncode != 0:
                lines = [line for line in p.stderr.splitlines() if line.strip()]
                why = lines[-1] if lines else f"exit status {p.returncode}"
                target = f" for {platform or 'this platform'}, Python {python_version or 'this one'}" \
                    if platform or python_version else ""
                why = why.replace(index, vault.url(pypi))  # (no password shown)
                raise WarmError(f"pip could not resolve {requirements}{target}: {why.strip()[:300]}")
            with open(report, encoding="utf-8") as f:
                doc = json.load(f)
        for install in doc.get("install", []):
            info = install.get("download_info") or {}
            url = info.get("url")
            if not url:
                continue
            path = vault_path(vault, url)
            if path is None:
                raise WarmError(f"{install.get('metadata', {}).get('name', url)} resolved to a file outside "
                                f"the vault ({urlsplit(url).hostname}): is {vault.url(pypi)} the vault's "
                                f"PyPI backend?")
            sha256 = ((info.get("archive_info") or {}).get("hashes") or {}).get("sha256")
            if path not in [f.path for f in files]:
                files.append(File(path, None, *_hex_digest("sha256", sha256)))
    return files


def _hex_digest(algorithm: str, hex_digest: object) -> tuple[str | None, bytes | None]:
    """(algorithm, digest) for a digest in hex, (None, None) if it is none."""
    try:
        return (algorithm, bytes.fromhex(hex_digest)) if isinstance(hex_digest, str) and hex_digest else (None, None)
    except ValueError:
        return None, None


def parse_image(reference: str) -> tuple[str, str]:
    """``prefix/repo:tag`` or ``prefix/repo@sha256:…`` → (name, reference)."""
    name, at, digest = reference.partition("@")
    if at:
        return name, digest
    head, colon, tag = name.rpartition(":")
    if colon and "/" not in tag:
        return head, tag
    return name, "latest"


def image_files(vault: Vault, reference: str, item: Item) -> list[File]:
    """
    Fetch the image's manifests (the index, then each platform's), and
    return its blobs (configs and layers), with their sizes and digests.
    """
    name, ref = parse_image(reference)
    if "/" not in name:
        raise WarmError(f"--image {reference}: name it with the backend's prefix, like dockerhub/library/alpine:3.20")
    blobs: list[File] = []
    todo = [ref]
    seen: set[str] = set()
    if not ref.startswith("sha256:"):  # a tag: what it points at is kept per client's Accept (see CLIENT_ACCEPTS)
        for accept in CLIENT_ACCEPTS[1:]:
            cache, _size, _ = vault.get(f"/v2/{name}/manifests/{ref}", {"Accept": accept})
            if cache != "HIT":
                item.fetched += 1
    while todo:
        ref = todo.pop(0)
        if ref in seen:
            continue
        seen.add(ref)
        cache, size, body = vault.get(f"/v2/{name}/manifests/{ref}", {"Accept": MANIFEST_ACCEPT},
                                      keep=MAX_MANIFEST)
        _count(item, cache, size)
        try:
            doc = json.loads(body)
        except ValueError:
            raise WarmError(f"{name}:{ref}: the manifest is not JSON") from None
        media = doc.get("mediaType")
        if media in INDEXES or "manifests" in doc:
            todo += [m["digest"] for m in doc.get("manifests", []) if isinstance(m, dict) and "digest" in m]
            continue
        for blob in [doc.get("config")] + list(doc.get("layers") or []):
            if isinstance(blob, dict) and isinstance(blob.get("digest"), str):
                path = f"/v2/{name}/blobs/{blob['digest']}"
                algorithm, _, hex_digest = blob["digest"].partition(":")
                if path not in [f.path for f in blobs]:
                    blobs.append(File(path, blob.get("size") if isinstance(blob.get("size"), int) else None,
                                      *(_hex_digest(algorithm, hex_digest) if algorithm == "sha256" else (None, None))))
    return blobs


def _count(item: Item, cache: str, size: int) -> None:
    item.files += 1
    item.bytes += size
    if cache != "HIT":
        item.fetched += 1


# -- command line -----------------------------------------------------------------

#: The options an item may have in a C{--from} file, and the kind each makes.
ITEM_OPTIONS = {"-r": "requirements", "--requirement": "requirements", "--image": "image", "--url": "url",
                "--apt": "apt", "--apt-sources": "apt-sources", "--deb": "deb", "--npm-lock": "npm-lock"}
#: The kinds whose value is a file, relative to the C{--from} file it is named in.
FILE_KINDS = ("requirements", "npm-lock", "apt-sources")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="artifactvault warm",
                                description="Fill a vault ahead of time, through the vault itself.")
    p.add_argument("--vault", default=os.environ.get("ARTIFACTVAULT_URL", "http://127.0.0.1:8080"),
                   help="the vault's URL, with user:password@ (or user:token@) for a vault with auth: "
                        "(default: $ARTIFACTVAULT_URL or http://127.0.0.1:8080)")
    p.add_argument("--pypi", default="/pypi/", help="the PyPI backend's prefix (default /pypi/)")
    p.add_argument("-r", "--requirement", action="append", default=[], metavar="FILE",
                   help="a requirements file, resolved through the vault's PyPI backend (repeatable)")
    p.add_argument("--platform", action="append", default=[],
                   help="resolve requirements for this platform too, e.g. manylinux2014_aarch64 (repeatable)")
    p.add_argument("--python-version", action="append", default=[],
                   help="resolve requirements for this Python too, e.g. 3.12 (repeatable)")
    p.add_argument("--image", action="append", default=[], metavar="REF",
                   help="an image: PREFIX/REPO:TAG or PREFIX/REPO@DIGEST, e.g. dockerhub/library/alpine:3.20")
    p.add_argument("--url", action="append", default=[], metavar="PATH", help="one file: a path on the vault")
    p.add_argument("--apt", action="append", default=[], metavar="LINE",
                   help="a sources.list line whose URI is an apt backend's prefix (or its full URL on the "
                        "vault), e.g. 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                        "/debian/ bookworm main' (repeatable: all lines make one apt source list); "
                        "apt-get update through the vault, then --deb's packages")
    p.add_argument("--apt-sources", action="append", default=[], metavar="FILE",
                   help="a deb822 .sources file (Types, URIs, Suites, Components, Signed-By...) whose URIs "
                        "are apt backends' prefixes (or their full URLs on the vault): its sources join "
                        "the --apt lines (repeatable)")
    p.add_argument("--deb", action="append", default=[], metavar="PKG",
                   help="a package apt-get would install from the --apt lines, with every dependency, "
                        "as on a machine with nothing installed (repeatable; PKG=VERSION works)")
    p.add_argument("--arch", action="append", default=[],
                   help="the architecture of --deb's packages (default: this machine's, dpkg --print-architecture); "
                        "repeatable: the indexes and packages of each, for a fleet of several "
                        "(e.g. --arch amd64 --arch arm64)")
    p.add_argument("--npm-lock", action="append", default=[], metavar="FILE",
                   help="a package-lock.json (or npm-shrinkwrap.json): every registry package in it, its "
                        "packument and tarball, through the vault's npm backend (repeatable)")
    p.add_argument("--npm", default="/npm/", help="the npm backend's prefix (default /npm/)")
    p.add_argument("--from", dest="from_files", action="append", default=[], metavar="FILE",
                   help="items, one a line: '-r FILE', '--image REF', '--url PATH' (or a bare /path), "
                        "'--apt LINE', '--apt-sources FILE', '--deb PKG', '--npm-lock FILE'; # comments")
    p.add_argument("-j", "--jobs", type=int, default=4, help="files fetched at once (default 4)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, even on a terminal")
    p.add_argument("--pip", default=None,
                   help="the pip command to resolve with (default: this Python's: python -m pip)")
    return p


def read_items(path: str) -> list[tuple[str, str]]:
    """The items of a C{--from} file: (kind, value) each; a relative file is relative to the file."""
    items = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise WarmError(f"--from {path}: {e.strerror}") from None
    for number, line in enumerate(lines, 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise WarmError(f"{path}:{number}: {e}") from None
        if not words:
            continue
        if len(words) == 1 and words[0].startswith("/"):
            items.append(("url", words[0]))
            continue
        if len(words) != 2:
            raise WarmError(f"{path}:{number}: expected an option and its value ('-r FILE', '--image REF', "
                            f"'--url PATH', '--apt LINE' quoted, '--apt-sources FILE', '--deb PKG', "
                            f"'--npm-lock FILE'), "
                            f"not {line.strip()!r}")
        option, value = words
        kind = ITEM_OPTIONS.get(option)
        if kind is None:
            raise WarmError(f"{path}:{number}: unknown item {option!r}")
        if kind in FILE_KINDS and not os.path.isabs(value):
            value = os.path.join(os.path.dirname(os.path.abspath(path)), value)
        items.append((kind, value))
    return items


def make_items(vault: Vault, wanted: list[tuple[str, str]], arches: list[str]) -> list[Item]:
    """
    An L{Item} for each thing asked for; every C{--apt} line, every
    source of an C{--apt-sources} file and every C{--deb} together make one
    apt item (one apt source list resolves them all), one per architecture
    of C{arches} (none: this machine's), named with it when there are several.
    """
    items = [Item(kind, what) for kind, what in wanted if kind not in ("apt", "apt-sources", "deb")]
    lines = [line for kind, what in wanted if kind in ("apt", "apt-sources")
             for line in ([what] if kind == "apt" else warm_apt.deb822_lines(what))]
    debs = [what for kind, what in wanted if kind == "deb"]
    if debs and not lines:
        raise WarmError("--deb needs the apt source to resolve it from: give --apt LINE or --apt-sources FILE")
    if lines:
        what = " ".join(debs) if debs else "(indexes only)"
        each: list[str | None] = list(dict.fromkeys(arches)) or [None]
        for arch in each:
            request = warm_apt.AptRequest.make(vault, lines, debs, arch)
            items.append(Item("apt", f"{what} ({arch})" if len(each) > 1 else what, request=request))
    return items


@dataclass
class Settings:
    """How items are planned: the backends' prefixes, pip's targets and command."""

    pypi: str = "/pypi/"
    targets: list[tuple[str | None, str | None]] = field(default_factory=lambda: [(None, None)])
    pip: list[str] = field(default_factory=lambda: [sys.executable, "-m", "pip"])
    npm: str = "/npm/"


def main(argv: list[str] | None = None, console: Console | None = None) -> int:
    args = parser().parse_args(argv)
    err = console or Console(stderr=True)
    try:
        vault = Vault(args.vault)
        wanted = [("requirements", r) for r in args.requirement] + [("image", i) for i in args.image] + \
            [("url", u) for u in args.url] + [("npm-lock", n) for n in args.npm_lock] + \
            [("apt", a) for a in args.apt] + [("apt-sources", a) for a in args.apt_sources] + \
            [("deb", d) for d in args.deb]
        for path in args.from_files:
            wanted += read_items(path)
        if not wanted:
            raise WarmError("nothing to warm: give -r, --image, --url, --apt, --apt-sources, --npm-lock or --from")
        if args.jobs < 1:
            raise WarmError("--jobs must be at least 1")
        items = make_items(vault, wanted, args.arch)
    except WarmError as e:
        err.print(f"artifactvault warm: {e}", markup=False, highlight=False)
        return 2
    targets: list[tuple[str | None, str | None]] = [(None, None)]
    if args.platform or args.python_version:
        targets = list(itertools.product(args.platform or [None], args.python_version or [None]))
    pip = shlex.split(args.pip) if args.pip else [sys.executable, "-m", "pip"]
    show = err.is_terminal and not args.quiet
    settings = Settings(pypi=args.pypi, targets=targets, pip=pip, npm=args.npm)
    run(vault, items, settings, args.jobs, err if show else None)
    out = Console() if console is None else console
    out.print(summary(items))
    return 1 if any(item.errors for item in items) else 0


def plan(vault: Vault, item: Item, settings: Settings) -> list[File]:
    """The files of C{item} (run in the pool: pip and apt-get are run, manifests fetched)."""
    if item.kind == "url":
        return [File(item.what if item.what.startswith("/") else "/" + item.what)]
    if item.kind == "image":
        return image_files(vault, item.what, item)
    if item.kind == "apt":
        return warm_apt.apt_files(vault, item.request, item)  # type: ignore[arg-type]
    if item.kind == "npm-lock":
        return warm_npm.lock_files(settings.npm, item.what, item)
    if not os.path.exists(item.what):
        raise WarmError(f"no such requirements file: {item.what}")
    return requirement_files(vault, settings.pypi, item.what, settings.targets, settings.pip)


def run(vault: Vault, items: list[Item], settings: Settings, jobs: int, console: Console | None) -> None:
    """Warm every item: plan each (in the pool), then fetch all their files (in the pool)."""
    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                        TextColumn("files"), console=console, disable=console is None, transient=False)
    lock = threading.Lock()
    with progress, concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        overall = progress.add_task("all items", total=None)
        tasks = {id(item): progress.add_task(item.label, total=None) for item in items}
        planned: dict[int, list[File]] = {}
        for item, future in [(item, pool.submit(plan, vault, item, settings)) for item in items]:
            try:
                planned[id(item)] = future.result()
            except WarmError as e:
                item.errors.append(str(e))
                planned[id(item)] = []
            progress.update(tasks[id(item)], total=len(planned[id(item)]))
        progress.update(overall, total=sum(map(len, planned.values())))

        def fetch(item: Item, file: File) -> None:
            task = tasks[id(item)]
            try:
                cache, size = fetch_file(vault, file)
            except WarmError as e:
                with lock:
                    item.errors.append(str(e))
            else:
                with lock:
                    _count(item, cache, size)
            progress.update(task, advance=1)
            progress.update(overall, advance=1)

        futures = [pool.submit(fetch, item, file) for item in items for file in planned[id(item)]]
        for future in futures:
            future.result()


def summary(items: Iterable[Item]) -> Table:
    table = Table(title="artifactvault warm", show_lines=False)
    for name, justify in (("item", "left"), ("result", "left"), ("files", "right"), ("fetched", "right"),
                          ("bytes", "right"), ("reason", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for item in items:
        reason = "; ".join(item.errors[:3]) + (f" (and {len(item.errors) - 3} more)" if len(item.errors) > 3 else "")
        reason = "; ".join(([reason] if reason else []) + item.notes)
        style = {"failed": "red", "fetched": "green"}.get(item.result, "")
        table.add_row(Text(item.label), Text(item.result, style=style), str(item.files), str(item.fetched),
                      str(item.bytes), Text(reason))
    return table

