#!/usr/bin/env python3
"""
Build a small signed Debian repository from scratch, with no network:
tiny packages made by ``dpkg-deb --build``, one native source package made by
``dpkg-source -b``, indexes by ``apt-ftparchive``, a Release with
``Acquire-By-Hash: yes`` and by-hash copies of every index (as Debian's
archive software makes them), signed with a throwaway key (InRelease by
``gpg --clearsign``, Release.gpg detached).

    make-apt-repo.py OUT --gnupghome DIR [--packages N] [--bump N] [--big-mb M]
                     [--keep-by-hash-from OLD] [--pool-from OLD]
    make-apt-repo.py OUT --gnupghome DIR --flat [--packages N]

Layout of OUT (``deb [signed-by=DIR/key.gpg] http://HOST/OUT stable main``)::

    pool/main/a/av-pkg-NN/av-pkg-NN_1.0-1_all.deb    --packages of them (default 8)
    pool/main/a/av-src/av-src_1.0.dsc, .tar.xz        a native source package
    dists/stable/{InRelease,Release,Release.gpg}
    dists/stable/main/binary-{amd64,arm64}/{Packages,Packages.gz,Packages.xz}
    dists/stable/main/source/{Sources,Sources.xz}
    dists/stable/main/{binary-amd64,binary-arm64,source}/by-hash/{MD5Sum,SHA256}/<hex>

Two architectures, as a real archive has several (the packages are all
``Architecture: all``, so both list them): a client of either, and warm's
``--arch`` for a machine other than the one it runs on, are tested against it.

``--bump N``: the first N packages at version 1.0-2 (a second version of the
repository: new files in the pool, new indexes, re-signed); with
``--pool-from OLD`` the old pool files are kept too (hard links) and with
``--keep-by-hash-from OLD`` the old by-hash files, as a real mirror keeps
them for a while. ``--big-mb M`` adds ``av-big`` with an M MiB random file.
The key is made once in DIR (``DIR/key.gpg`` binary, for ``signed-by=``).

``--flat``: a flat repository instead (``deb [signed-by=…] http://HOST/OUT ./``,
as many third-party repositories are): no ``dists/`` and no pool, the
packages (``av-flat-NN``) and the indexes side by side at the top, made as
such repositories are made (``apt-ftparchive packages . > Packages``, ``xz
-k``, ``apt-ftparchive release .``), signed the same way::

    av-flat-NN_1.0-1_all.deb, Packages, Packages.xz, Release, InRelease, Release.gpg
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile

SUITE = "stable"
#: The architectures of the binary indexes (dists/stable/main/binary-<arch>).
ARCHES = ("amd64", "arm64")
KEY_UID = "Artifact Vault test repository <apt-test@example.invalid>"


def run(*args: str, cwd: str | None = None, env: dict | None = None, out: str | None = None) -> None:
    if out is None:
        subprocess.run(args, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    else:
        with open(out, "wb") as f:
            subprocess.run(args, cwd=cwd, env=env, check=True, stdout=f)


def gpg_env(home: str) -> dict:
    return dict(os.environ, GNUPGHOME=home)


def ensure_key(home: str) -> None:
    os.makedirs(home, mode=0o700, exist_ok=True)
    if os.path.exists(os.path.join(home, "key.gpg")):
        return
    env = gpg_env(home)
    run("gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key", KEY_UID, "ed25519", "sign",
        "never", env=env)
    run("gpg", "--batch", "--quiet", "--export", KEY_UID, env=env, out=os.path.join(home, "key.gpg.tmp"))
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)
    os.rename(os.path.join(home, "key.gpg.tmp"), os.path.join(home, "key.gpg"))


def build_deb(pool: str, name: str, version: str, payload: bytes, work: str, flat: bool = False) -> None:
    root = os.path.join(work, f"{name}_{version}")
    os.makedirs(os.path.join(root, "DEBIAN"))
    doc = os.path.join(root, "usr", "share", "doc", name)
    os.makedirs(doc)
    with open(os.path.join(doc, "README"), "wb") as f:
        f.write(payload)
    with open(os.path.join(root, "DEBIAN", "control"), "w") as f:
        f.write(f"Package: {name}\nVersion: {version}\nArchitecture: all\nSection: misc\n"
                f"Priority: optional\nMaintainer: Artifact Vault tests <apt-test@example.invalid>\n"
                f"Description: test package {name}\n a tiny package for the apt backend's tests\n")
    target = pool if flat else os.path.join(pool, name[0], name)
    os.makedirs(target, exist_ok=True)
    compress = ["-Znone"] if len(payload) > 1 << 20 else []
    run("dpkg-deb", "--root-owner-group", *compress, "--build", root,
        os.path.join(target, f"{name}_{version}_all.deb"))
    shutil.rmtree(root)


def build_source(pool: str, work: str) -> None:
    src = os.path.join(work, "av-src-1.0")
    os.makedirs(os.path.join(src, "debian", "source"))
    files = {
        "debian/source/format": "3.0 (native)\n",
        "debian/control": ("Source: av-src\nSection: misc\nPriority: optional\n"
                           "Maintainer: Artifact Vault tests <apt-test@example.invalid>\n"
                           "Standards-Version: 4.6.2\n\nPackage: av-src\nArchitecture: all\n"
                           "Description: test source package\n for apt-get source\n"),
        "debian/changelog": ("av-src (1.0) stable; urgency=low\n\n  * Test.\n\n"
                             " -- Artifact Vault tests <apt-test@example.invalid>  "
                             "Thu, 01 Jan 2026 00:00:00 +0000\n"),
        "hello.txt": "hello from av-src\n",
    }
    for path, text in files.items():
        with open(os.path.join(src, path), "w") as f:
            f.write(text)
    run("dpkg-source", "-b", "av-src-1.0", cwd=work)
    target = os.path.join(pool, "a", "av-src")
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(work):
        if name.startswith("av-src_"):
            shutil.move(os.path.join(work, name), os.path.join(target, name))
    shutil.rmtree(src)


def by_hash(index_dir: str) -> None:
    """Copy every index file of one directory to by-hash/{MD5Sum,SHA256}/<hex>."""
    for name in sorted(os.listdir(index_dir)):
        path = os.path.join(index_dir, name)
        if not os.path.isfile(path):
            continue
        data = open(path, "rb").read()
        for algo, label in (("md5", "MD5Sum"), ("sha256", "SHA256")):
            d = os.path.join(index_dir, "by-hash", label)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, hashlib.new(algo, data).hexdigest()), "wb") as f:
                f.write(data)


def sign(dist: str, gnupghome: str) -> None:
    """InRelease (clear-signed) and Release.gpg (detached) for the Release in C{dist}."""
    env = gpg_env(gnupghome)
    sign = ["gpg", "--batch", "--quiet", "--yes", "--local-user", KEY_UID]
    run(*sign, "--clearsign", "--output", os.path.join(dist, "InRelease"), os.path.join(dist, "Release"), env=env)
    run(*sign, "--detach-sign", "--armor", "--output", os.path.join(dist, "Release.gpg"),
        os.path.join(dist, "Release"), env=env)
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)  # (gpg started it: leave none behind)


def flat(out: str, gnupghome: str, packages: int) -> None:
    """A flat repository in C{out} (see the module's docstring), built beside it and moved in place."""
    tmp_out = out + ".tmp"
    shutil.rmtree(tmp_out, ignore_errors=True)
    os.makedirs(tmp_out)
    with tempfile.TemporaryDirectory() as work:
        for i in range(1, packages + 1):
            name = f"av-flat-{i:02d}"
            build_deb(tmp_out, name, "1.0-1", f"{name} 1.0-1\n".encode() * 50, work, flat=True)
    no_extra = ["-o", "APT::FTPArchive::SHA1=false", "-o", "APT::FTPArchive::SHA512=false"]
    run("apt-ftparchive", *no_extra, "packages", ".", cwd=tmp_out, out=os.path.join(tmp_out, "Packages"))
    run("xz", "-k", os.path.join(tmp_out, "Packages"))
    fields = {"Origin": "Artifact Vault tests", "Label": "av-flat", "Suite": "flat",
              "Description": "flat test repository of the apt backend"}
    opts = [f"-o=APT::FTPArchive::Release::{k}={v}" for k, v in fields.items()]
    opts.append("-o=APT::FTPArchive::Release::ValidTime=315360000")
    release = os.path.join(os.path.dirname(tmp_out), os.path.basename(out) + ".Release")  # (not listed in itself)
    run("apt-ftparchive", *no_extra, *opts, "release", ".", cwd=tmp_out, out=release)
    os.rename(release, os.path.join(tmp_out, "Release"))
    sign(tmp_out, gnupghome)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp_out, out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--gnupghome", required=True)
    p.add_argument("--packages", type=int, default=8)
    p.add_argument("--bump", type=int, default=0)
    p.add_argument("--big-mb", type=int, default=0)
    p.add_argument("--pool-from")
    p.add_argument("--keep-by-hash-from")
    p.add_argument("--flat", action="store_true")
    a = p.parse_args()

    ensure_key(a.gnupghome)
    if a.flat:
        flat(os.path.abspath(a.out), a.gnupghome, a.packages)
        return
    out = os.path.abspath(a.out)
    tmp_out = out + ".tmp"
    shutil.rmtree(tmp_out, ignore_errors=True)
    pool = os.path.join(tmp_out, "pool", "main")
    os.makedirs(pool)
    if a.pool_from:
        shutil.copytree(os.path.join(a.pool_from, "pool"), os.path.join(tmp_out, "pool"),
                        copy_function=os.link, dirs_exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for i in range(1, a.packages + 1):
            name = f"av-pkg-{i:02d}"
            version = "1.0-2" if i <= a.bump else "1.0-1"
            if not os.path.exists(os.path.join(pool, "a", name, f"{name}_{version}_all.deb")):
                build_deb(pool, name, version, f"{name} {version}\n".encode() * 50, work)
        if a.big_mb:
            build_deb(pool, "av-big", "1.0-1", os.urandom(a.big_mb << 20), work)
        if not os.path.isdir(os.path.join(pool, "a", "av-src")):
            build_source(pool, work)

    dist = os.path.join(tmp_out, "dists", SUITE)
    binaries = [os.path.join(dist, "main", f"binary-{arch}") for arch in ARCHES]
    source = os.path.join(dist, "main", "source")
    os.makedirs(source)
    no_extra = ["-o", "APT::FTPArchive::SHA1=false", "-o", "APT::FTPArchive::SHA512=false"]
    for arch, binary in zip(ARCHES, binaries):
        os.makedirs(binary)
        run("apt-ftparchive", *no_extra, "--arch", arch, "packages", "pool/main", cwd=tmp_out,
            out=os.path.join(binary, "Packages"))
        run("gzip", "-9nk", os.path.join(binary, "Packages"))
        run("xz", "-k", os.path.join(binary, "Packages"))
    run("apt-ftparchive", *no_extra, "sources", "pool/main", cwd=tmp_out, out=os.path.join(source, "Sources"))
    run("xz", "-k", os.path.join(source, "Sources"))
    for d in (*binaries, source):
        by_hash(d)
        if a.keep_by_hash_from:
            old = os.path.join(a.keep_by_hash_from, os.path.relpath(d, tmp_out), "by-hash")
            for label in os.listdir(old):
                for name in os.listdir(os.path.join(old, label)):
                    target = os.path.join(d, "by-hash", label, name)
                    if not os.path.exists(target):
                        os.link(os.path.join(old, label, name), target)
    fields = {"Origin": "Artifact Vault tests", "Label": "av-test", "Suite": SUITE, "Codename": SUITE,
              "Architectures": " ".join(ARCHES), "Components": "main", "Acquire-By-Hash": "yes",
              "Description": "test repository of the apt backend"}
    opts = [f"-o=APT::FTPArchive::Release::{k}={v}" for k, v in fields.items()]
    # Valid-Until ten years on: the repository is built once and kept.
    opts.append("-o=APT::FTPArchive::Release::ValidTime=315360000")
    run("apt-ftparchive", *no_extra, *opts, "release", ".", cwd=dist, out=os.path.join(dist, "Release.new"))
    os.rename(os.path.join(dist, "Release.new"), os.path.join(dist, "Release"))
    sign(dist, a.gnupghome)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp_out, out)


if __name__ == "__main__":
    main()
