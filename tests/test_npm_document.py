"""
npm names, Accept, digests and the stored template of a package document
(L{artifactvault.backends.npm_document}).
"""

from __future__ import annotations

import base64
import hashlib
import json

from twisted.trial.unittest import SynchronousTestCase

from artifactvault import slicedjson
from artifactvault.backends import npm_document as doc
from artifactvault.upstream import UpstreamError


def sri(data: bytes, algo: str = "sha512") -> str:
    return f"{algo}-" + base64.b64encode(hashlib.new(algo, data).digest()).decode()


def packument(name: str, versions: dict[str, bytes], base: str = "http://up.test/",
              **extra: object) -> dict:
    unscoped = name.rpartition("/")[2]
    return {"_id": name, "name": name, "dist-tags": {"latest": list(versions)[-1]},
            "versions": {v: {"name": name, "version": v, "description": "d \u00e9 \"q\" \\",
                             "dist": {"integrity": sri(data), "shasum": hashlib.sha1(data).hexdigest(),
                                      "tarball": f"{base}{name}/-/{unscoped}-{v}.tgz",
                                      "signatures": [{"keyid": "k", "sig": "s"}]}}
                         for v, data in versions.items()},
            "time": {v: "2020-01-01T00:00:00.000Z" for v in versions}, **extra}


def filled(chunks: list[bytes], base: str) -> tuple[dict, dict]:
    """(the document a client gets with C{base}, the tarball index) from template chunks."""
    stored = b"".join(chunks)
    layout = doc.Layout(stored[:doc.HEADER_READ], len(stored))
    b = doc.json_base(base)
    body = doc.fill(stored[layout.start:layout.index_start], b)
    assert len(body) == layout.filled_length(b)
    return json.loads(body), json.loads(stored[layout.index_start:])


class NameTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """Plain, scoped, old capitalised names, npm's URL-safe punctuation."""
        for name in ("a", "av-app", "@av/base", "JSONStream", "lodash.get", "a~b", "-x", "@types/node",
                     "x" * 214):
            self.assertEqual(doc.check_name(name), name)

    def test_invalid(self) -> None:
        """Anything that is not npm's form is refused: dots, underscores, spaces, slashes, length."""
        for name in ("", ".x", "_x", "@av", "@/x", "@av/", "@av/.x", "a b", "a/b", "@a/b/c", "a%2fb",
                     "a\x00", "é", "x" * 215, "a:b", "a?b", "..", "@av/base/-"):
            self.assertRaises(doc.BadName, doc.check_name, name)

    def test_escaped(self) -> None:
        """A scoped name goes upstream as npm sends it: @scope%2fname."""
        self.assertEqual((doc.escaped("@av/base"), doc.escaped("av-app")), ("@av%2fbase", "av-app"))

    def test_tarball_names(self) -> None:
        """npm's file name: the unscoped name and the version; odd versions give none."""
        self.assertEqual(doc.tarball_name("@av/base", "1.0.0-rc.1"), "base-1.0.0-rc.1.tgz")
        self.assertEqual(doc.tarball_name("a", "1.0.0+b"), "a-1.0.0+b.tgz")
        for bad in ("", "../1", "1/2", "1 2", None, 1):
            self.assertIsNone(doc.tarball_name("a", bad))  # type: ignore[arg-type]
        self.assertTrue(doc.valid_filename("base-1.0.0.tgz"))
        for bad in ("x.tar", ".x.tgz", "a b.tgz", "a/b.tgz", "a.tgz\x00"):
            self.assertFalse(doc.valid_filename(bad), bad)


class AcceptTests(SynchronousTestCase):
    def test_abbreviated(self) -> None:
        """npm's, yarn's and pnpm's install Accept headers ask for the abbreviated document."""
        for accept in (b"application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*",
                       b"application/vnd.npm.install-v1+json", b"APPLICATION/VND.NPM.INSTALL-V1+JSON;q=0.5"):
            self.assertTrue(doc.wants_abbreviated(accept), accept)

    def test_full(self) -> None:
        """No Accept, JSON, or the abbreviated form refused (q=0) or malformed q: the full document."""
        for accept in (None, b"", b"application/json", b"*/*", b"application/vnd.npm.install-v1+json;q=0",
                       b"application/vnd.npm.install-v1+json;q=x", b"application/vnd.npm.install-v1+jsonx"):
            self.assertFalse(doc.wants_abbreviated(accept), accept)


class DigestTests(SynchronousTestCase):
    def test_strongest_sri(self) -> None:
        """sha512 over weaker SRI hashes, as hex; options after ? are ignored."""
        data = b"tarball"
        dist = {"integrity": f"{sri(data, 'sha1')} {sri(data)}?opt", "shasum": "0" * 40}
        self.assertEqual(doc.pick_digest(dist), ("sha512", hashlib.sha512(data).hexdigest()))

    def test_shasum_only_without_integrity(self) -> None:
        """The sha1 shasum is used only when no usable integrity is given."""
        sha1 = hashlib.sha1(b"x").hexdigest()
        self.assertEqual(doc.pick_digest({"shasum": sha1.upper()}), ("sha1", sha1))
        self.assertEqual(doc.pick_digest({"integrity": "sha512-!!!", "shasum": sha1}), ("sha1", sha1))
        self.assertEqual(doc.pick_digest({"integrity": "md5-" + base64.b64encode(b"x" * 16).decode(),
                                          "shasum": sha1}), ("sha1", sha1))

    def test_none(self) -> None:
        """Wrong lengths, bad shasums, no dist: nothing to check against."""
        short = "sha512-" + base64.b64encode(b"x" * 10).decode()
        for dist in ({}, None, {"integrity": short}, {"shasum": "xyz"}, {"integrity": 5}):
            self.assertIsNone(doc.pick_digest(dist))


class TemplateTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """
        Filled in, the template is the upstream document with only each
        dist.tarball changed (to the base URL + name/-/file); integrity,
        shasum, signatures and every other field as they were; the index
        says where each tarball is upstream and what it must hash to.
        """
        original = packument("@av/base", {"1.0.0": b"one", "1.1.0": b"two"}, readme="# hi\u2028")
        chunks = doc.make_template(json.dumps(original, indent=2).encode(), "@av/base")
        got, index = filled(chunks, "http://vault.test:8080/npm/")
        expected = json.loads(json.dumps(original))
        for v in ("1.0.0", "1.1.0"):
            expected["versions"][v]["dist"]["tarball"] = f"http://vault.test:8080/npm/@av/base/-/base-{v}.tgz"
        self.assertEqual(got, expected)
        self.assertEqual(list(got), list(original))  # key order kept
        self.assertEqual(index["base-1.0.0.tgz"], ["http://up.test/@av/base/-/base-1.0.0.tgz", "sha512",
                                                   hashlib.sha512(b"one").hexdigest()])

    def test_one_marker_per_tarball(self) -> None:
        """The header counts the markers: the filled length is exact for any base."""
        chunks = doc.make_template(json.dumps(packument("a", {"1.0.0": b"x", "2.0.0": b"y"})).encode(), "a")
        layout = doc.Layout(b"".join(chunks)[:doc.HEADER_READ], sum(map(len, chunks)))
        self.assertEqual(layout.markers, 2)
        for base in ("http://h/", "https://a.very.long.host.name.example:65535/some/prefix/"):
            got, _ = filled(chunks, base)
            self.assertTrue(got["versions"]["2.0.0"]["dist"]["tarball"].startswith(base))

    def test_nul_in_the_document_stays(self) -> None:
        """A NUL the upstream escaped in some string stays escaped: only the markers are raw."""
        original = packument("a", {"1.0.0": b"x"}, description="nul \x00 here")
        got, _ = filled(doc.make_template(json.dumps(original).encode(), "a"), "http://v/")
        self.assertEqual(got["description"], "nul \x00 here")

    def test_versions_left_alone(self) -> None:
        """A version with no http(s) tarball, no dist or an unusable version string is not rewritten."""
        original = {"name": "a", "versions": {
            "1.0.0": {"dist": {"tarball": "file:///etc/passwd"}},
            "2.0.0": {"version": "2.0.0"},
            "../x": {"dist": {"tarball": "http://up.test/a/-/a.tgz"}},
            "3.0.0": "not an object"}}
        got, index = filled(doc.make_template(json.dumps(original).encode(), "a"), "http://v/")
        self.assertEqual((got, index), (original, {}))

    def test_no_digest_recorded_as_none(self) -> None:
        """A version with neither integrity nor shasum is indexed with no digest."""
        original = {"name": "a", "versions": {"1.0.0": {"dist": {"tarball": "http://up.test/a/-/a-1.0.0.tgz"}}}}
        _, index = filled(doc.make_template(json.dumps(original).encode(), "a"), "http://v/")
        self.assertEqual(index, {"a-1.0.0.tgz": ["http://up.test/a/-/a-1.0.0.tgz", None, None]})

    def test_not_a_packument(self) -> None:
        """Bad JSON or another shape is an upstream error (a 502), never stored."""
        for body in (b"{", b"[1]", b'{"versions": []}', b"\xff"):
            self.assertRaises(UpstreamError, doc.make_template, body, "a")

    def test_empty_documents(self) -> None:
        """An empty object and one with no versions survive."""
        for original in ({}, {"name": "a", "versions": {}}):
            got, index = filled(doc.make_template(json.dumps(original).encode(), "a"), "http://v/")
            self.assertEqual((got, index), (original, {}))

    def test_many_versions_parsed_one_at_a_time(self) -> None:
        """
        Each version is encoded as it is read (the hook sees plain objects,
        never a whole versions map), so a document of thousands is never
        held as objects all at once.
        """
        seen = []
        loads = slicedjson.loads

        def spy(data, item=None, member=None):
            def hooked(outer, key, value):
                seen.append(type(value).__name__)
                return member(outer, key, value)
            return loads(data, item, hooked)
        self.patch(slicedjson, "loads", spy)
        original = packument("big", {f"1.0.{i}": b"%d" % i for i in range(3000)})
        got, index = filled(doc.make_template(json.dumps(original).encode(), "big"), "http://v/")
        self.assertEqual((len(got["versions"]), len(index)), (3000, 3000))
        self.assertEqual(set(seen), {"dict", "str"})  # versions' objects; "time"'s strings

    def test_layout_refuses_garbage(self) -> None:
        """A stored file that is not a template (or is cut short) is not read as one."""
        for head, size in ((b"{}", 2), (b"npm-template 1 x 2\n", 30), (b"npm-template 1 0 100\n{}", 23)):
            self.assertRaises(ValueError, doc.Layout, head, size)
