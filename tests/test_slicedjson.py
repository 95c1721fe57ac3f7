"""
Tests for L{artifactvault.slicedjson}: the same JSON as the json module, a
slice at a time.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from artifactvault import slicedjson

DOCS = [
    {"projects": [f"p{i}é\"\\x" for i in range(5000)]},
    {"name": "x", "api": "1.0", "versions": ["1"] * 4001,
     "files": [{"filename": f"f{i}", "hashes": {"sha256": "00"}, "size": i, "yanked": i % 2 == 0,
                "x": [1, 2.5e3, None, -1, True]} for i in range(4500)]},
    [1] * 4002, {}, [], "s", 1, None, {"a": []}, {"a": {"b": [1] * 3000}}, {1: 2}, [[1, 2]] * 2500,
]


def reference(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class SlicedJsonTests(SynchronousTestCase):

    def test_dumps_is_json_dumps(self) -> None:
        """Byte for byte what json.dumps writes (compact, UTF-8)."""
        for doc in DOCS:
            self.assertEqual(slicedjson.dumps(doc), reference(doc))

    def test_loads_is_json_loads(self) -> None:
        """What json.loads reads, compact or indented, from bytes or text."""
        for doc in DOCS:
            for raw in (reference(doc), json.dumps(doc, indent=2).encode(), json.dumps(doc)):
                self.assertEqual(slicedjson.loads(raw), json.loads(raw))

    def test_invalid(self) -> None:
        """Whatever json.loads refuses is a ValueError, within long arrays too."""
        runs = b'"x",' * 3000
        for bad in (b"", b"[1,]", b"[01]", b'{"a":1,}', b'{"a" 1}', b"[1] x", b'["\x01"]', b"[1 2]",
                    b"[" + b"1," * 3000 + b"]", b'{"a":[' + runs + b'"\\q"]}', b'{"a":[' + runs + b'"\\q",1]}',
                    b"\xff", b"nul", b'{"a":1 "b":2}', b"{1:2}", b'{"a":[' + runs):
            with self.subTest(bad=bad[:30]):
                self.assertRaises(ValueError, slicedjson.loads, bad)

    def test_no_long_calls(self) -> None:
        """No single encode handles more than SLICE items of a long array; text is decoded a slice at a time."""
        sizes: list[int] = []
        real = slicedjson._ENCODER

        class Recorder:
            def encode(self, obj: object) -> str:
                sizes.append(len(obj) if isinstance(obj, (list, dict)) else 1)
                return real.encode(obj)
        self.patch(slicedjson, "_ENCODER", Recorder())
        doc = {"projects": ["p"] * (3 * slicedjson.SLICE + 5)}
        self.assertEqual(slicedjson.dumps(doc), reference(doc))
        self.assertEqual(b"".join(slicedjson.dump_chunks(doc)), reference(doc))
        self.assertLessEqual(max(sizes), slicedjson.SLICE)
        self.assertEqual(slicedjson._RUN.match('"a",' * (slicedjson.SLICE + 10)).end(), 4 * slicedjson.SLICE)

    def test_text_slices(self) -> None:
        """Text decoded a MiB at a time, a character split across slices included; errors as asked."""
        self.patch(slicedjson, "TEXT_SLICE", 3)
        text = "aé€😀b" * 3
        slices = list(slicedjson.text_slices(text.encode()))
        self.assertEqual(("".join(slices), max(map(len, slices))), (text, 3))
        self.assertEqual("".join(slicedjson.text_slices(b"ab\xffcdef", "replace")), "ab\ufffdcdef")
        self.assertRaises(UnicodeDecodeError, list, slicedjson.text_slices(b"ab\xffcdef"))

    def test_small_window(self) -> None:
        """Through a window far smaller than the items (and numbers cut by its end), the same values."""
        self.patch(slicedjson, "TEXT_SLICE", 7)
        self.patch(slicedjson, "MARGIN", 5)
        docs = DOCS[:3] + [{"n": [123456789012345, 1.25e10, "x" * 50, {"k": "y" * 40}] * 3}, [12345678]]
        for doc in docs:
            for raw in (reference(doc), json.dumps(doc, indent=1).encode()):
                self.assertEqual(slicedjson.loads(raw), json.loads(raw))
        for bad in (b"[1,]", b'{"a":[1,2] x', b'{"a":"' + b"x" * 40):
            self.assertRaises(ValueError, slicedjson.loads, bad)

    def test_item(self) -> None:
        """item() replaces each element of a long-array candidate as it is read, and nothing else."""
        raw = reference({"meta": {"v": [1]}, "projects": [{"name": f"p{i}", "x": 1} for i in range(5)] + ["s", 7]})
        doc = slicedjson.loads(raw, lambda p: p["name"] if isinstance(p, dict) else None)
        self.assertEqual(doc, {"meta": {"v": [1]}, "projects": ["p0", "p1", "p2", "p3", "p4", None, None]})

    def test_member(self) -> None:
        """
        member() replaces each member of an object one level down (an npm
        document's versions) as it is read, told the outer key; nothing else.
        """
        raw = reference({"name": {"x": 1}, "versions": {"1.0": {"dist": 1}, "2.0": [2]}, "list": [{"a": 1}]})
        seen = []

        def member(outer, key, value):
            seen.append((outer, key))
            return f"{outer}/{key}" if outer == "versions" else value
        doc = slicedjson.loads(raw, member=member)
        self.assertEqual(doc, {"name": {"x": 1}, "versions": {"1.0": "versions/1.0", "2.0": "versions/2.0"},
                               "list": [{"a": 1}]})
        self.assertEqual(seen, [("name", "x"), ("versions", "1.0"), ("versions", "2.0")])

    def test_discard(self) -> None:
        """discard() empties a document's long lists, a slice at a time; other values stay."""
        deleted: list[int] = []

        class Spy(list):
            def __delitem__(self, index: slice) -> None:
                deleted.append(len(self[index]))
                super().__delitem__(index)
        doc = {"projects": Spy(range(2 * slicedjson.SLICE + 1)), "meta": {"a": 1}}
        slicedjson.discard(doc)
        self.assertEqual((doc, deleted), ({"projects": [], "meta": {"a": 1}},
                                          [slicedjson.SLICE, slicedjson.SLICE, 1]))
