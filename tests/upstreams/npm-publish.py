#!/usr/bin/env python3
"""Usage: npm-publish.py REGISTRY_URL SPEC.json   (or: - for the spec on stdin)

Publishes made-up npm packages to a registry (the kit's verdaccio) the way
`npm publish` does (one PUT of the package document with the tarball
attached), but in milliseconds and without npm. A user `kit` is created (or
logged in) first. SPEC is a JSON list of packages:

  [{"name": "@av/base", "version": "1.0.0", "dependencies": {"av-app": "^1.0.0"},
    "size": 4096}]

`size` (optional) adds that many bytes of incompressible filler
(package/filler.bin), made from the name and version, so the same spec
gives the same tarball on every run. Prints one line per package:
`name version integrity size`. A version the registry already has is
skipped (said on stderr), so running a spec twice is harmless.

Also a module: tarball(name, version, ...) -> bytes, publish(...).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

USER, PASSWORD = "kit", "kit-password-1"
MTIME = 499162500  # npm's own fixed tarball mtime (1985-10-26)


def filler(seed: str, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def tarball(name: str, version: str, dependencies: dict[str, str] | None = None,
            size: int = 0) -> bytes:
    """A gzipped npm package tarball (package/package.json, index.js, filler) with fixed times."""
    manifest = {"name": name, "version": version, "description": f"{name} for the vault's tests",
                "main": "index.js", "license": "MIT", "dependencies": dependencies or {}}
    files = {"package/package.json": json.dumps(manifest, indent=2).encode() + b"\n",
             "package/index.js": f"module.exports = {json.dumps(name + '@' + version)};\n".encode()}
    if size:
        files["package/filler.bin"] = filler(f"{name}@{version}", size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _request(method: str, url: str, body: Any = None, token: str | None = None,
             basic: str | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    elif basic:
        req.add_header("Authorization", "Basic " + base64.b64encode(basic.encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}


def login(registry: str) -> str:
    """A token for the kit's user (created on first use, as `npm adduser` does; then logged in)."""
    url = f"{registry}/-/user/org.couchdb.user:{USER}"
    body = {"name": USER, "password": PASSWORD, "type": "user", "roles": []}
    status, answer = _request("PUT", url, body)
    if status == 409:  # registered before: log in, as `npm login` does
        status, answer = _request("PUT", url, body, basic=f"{USER}:{PASSWORD}")
    if status not in (200, 201) or "token" not in answer:
        sys.exit(f"npm-publish: cannot log in to {registry}: {status} {answer}")
    return answer["token"]


def publish(registry: str, token: str, name: str, version: str,
            dependencies: dict[str, str] | None = None, size: int = 0) -> tuple[str, int] | None:
    """Publish one package version; (integrity, tarball size), or None if it was already there."""
    data = tarball(name, version, dependencies, size)
    basename = f"{name.rpartition('/')[2]}-{version}.tgz"
    path = urllib.parse.quote(name, safe="@")
    manifest = {"name": name, "version": version, "description": f"{name} for the vault's tests",
                "main": "index.js", "license": "MIT", "dependencies": dependencies or {},
                "_id": f"{name}@{version}",
                "dist": {"integrity": integrity(data), "shasum": hashlib.sha1(data).hexdigest(),
                         "tarball": f"{registry}/{name}/-/{basename}"}}
    body = {"_id": name, "name": name, "description": manifest["description"],
            "dist-tags": {"latest": version}, "versions": {version: manifest},
            "_attachments": {f"{name}-{version}.tgz": {
                "content_type": "application/octet-stream",
                "data": base64.b64encode(data).decode(), "length": len(data)}}}
    status, answer = _request("PUT", f"{registry}/{path}", body, token)
    if status == 409 or (status == 403 and "exist" in json.dumps(answer)):
        return None
    if status not in (200, 201):
        sys.exit(f"npm-publish: PUT {name}@{version}: {status} {answer}")
    return manifest["dist"]["integrity"], len(data)


def publish_tarball(registry: str, token: str, data: bytes) -> tuple[str, str] | None:
    """
    Publish an existing package tarball as it is (its own package.json, its
    bytes, so its integrity is the one it had elsewhere); (name, version),
    or None if that version was already there.
    """
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.split("/", 1)[-1] == "package.json"
                      and m.name.count("/") == 1)
        manifest = json.load(tar.extractfile(member))  # type: ignore[arg-type]
    name, version = manifest["name"], manifest["version"]
    basename = f"{name.rpartition('/')[2]}-{version}.tgz"
    manifest.update(_id=f"{name}@{version}", dist={
        "integrity": integrity(data), "shasum": hashlib.sha1(data).hexdigest(),
        "tarball": f"{registry}/{name}/-/{basename}"})
    body = {"_id": name, "name": name, "description": manifest.get("description", ""),
            "dist-tags": {"latest": version}, "versions": {version: manifest},
            "_attachments": {f"{name}-{version}.tgz": {
                "content_type": "application/octet-stream",
                "data": base64.b64encode(data).decode(), "length": len(data)}}}
    status, answer = _request("PUT", f"{registry}/{urllib.parse.quote(name, safe='@')}", body, token)
    if status == 409 or (status == 403 and "exist" in json.dumps(answer)):
        return None
    if status not in (200, 201):
        sys.exit(f"npm-publish: PUT {name}@{version}: {status} {answer}")
    return name, version


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    registry = sys.argv[1].rstrip("/")
    spec = json.load(sys.stdin if sys.argv[2] == "-" else open(sys.argv[2]))
    token = login(registry)
    for p in spec:
        got = publish(registry, token, p["name"], p["version"], p.get("dependencies"), p.get("size", 0))
        if got is None:
            print(f"npm-publish: {p['name']}@{p['version']} is already published", file=sys.stderr)
            continue
        print(p["name"], p["version"], *got)


if __name__ == "__main__":
    main()
