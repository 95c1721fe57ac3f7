"""
Tests for L{artifactvault.auth.files}: htpasswd (bcrypt only) and tokens
files in, users and tokens out; every line the vault cannot use is one
line naming the file and the line, never quoting a secret (hypothesis
writes files of every shape).
"""

from __future__ import annotations

import subprocess

import bcrypt
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from artifactvault.auth.files import MIN_TOKEN, parse_htpasswd, parse_tokens
from artifactvault.config import ConfigError

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
TOKEN = "t" * MIN_TOKEN + "0123"

names = st.text(st.characters(blacklist_characters=": \t\r\n\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u2029#",
                              blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=20)
tokens = st.text(st.sampled_from("abcdefABCDEF0123456789-_.~+/="), min_size=MIN_TOKEN, max_size=64)


class HtpasswdTests(SynchronousTestCase):

    def test_bcrypt_entries(self) -> None:
        """$2y$ (htpasswd -B), $2b$ and $2a$ entries are read; comments and blank lines skipped."""
        text = f"# users\n\nalice:{HASH.replace('$2b$', '$2y$')}\n  \nbob:{HASH}\ncarol:{HASH.replace('$2b$', '$2a$')}\n"
        users = parse_htpasswd(text, "h")
        self.assertEqual(sorted(users), ["alice", "bob", "carol"])
        self.assertTrue(bcrypt.checkpw(b"secret", users["alice"]))

    def test_htpasswd_tool(self) -> None:
        """A file htpasswd -B writes (apache2-utils) is read as it is."""
        line = subprocess.run(["htpasswd", "-nbB", "-C", "4", "dave", "pw"], check=True,
                              capture_output=True, text=True).stdout
        self.assertTrue(bcrypt.checkpw(b"pw", parse_htpasswd(line, "h")["dave"]))

    def assertRefused(self, text: str, *fragments: str) -> str:
        message = str(self.assertRaises(ConfigError, parse_htpasswd, text, "/etc/vault/htpasswd"))
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("/etc/vault/htpasswd: line "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_other_schemes(self) -> None:
        """Every other scheme htpasswd writes is refused, named, with its line; the hash is not quoted."""
        for hashed, scheme in [("$apr1$abcdefgh$0123456789012345678901", "apr1-MD5"),
                               ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
                               ("abQ9KY.KfrYrc", "DES crypt"),
                               ("$6$salt$hash", "crypt(3)"),
                               ("plaintext", "plain text"),
                               ("$2y$05$short", "malformed bcrypt")]:
            message = self.assertRefused(f"# c\nalice:{HASH}\nbob:{hashed}\n", "line 3", "user bob",
                                         "only bcrypt", scheme)
            self.assertNotIn(hashed, message)

    def test_bad_lines(self) -> None:
        """A line without ':', an empty or spaced user name, a user twice, a cost out of range."""
        self.assertRefused("alice\n", "line 1", "user:hash")
        self.assertRefused(f":{HASH}\n", "line 1", "user name")
        self.assertRefused(f"al ice:{HASH}\n", "line 1", "user name")
        self.assertRefused(f"a:{HASH}\na:{HASH}\n", "line 2", "twice")
        self.assertRefused(f"a:{HASH.replace('$04$', '$03$')}\n", "line 1", "cost")

    @settings(max_examples=300)
    @given(st.lists(st.one_of(st.text(max_size=80),
                              st.tuples(names, st.sampled_from([HASH, "$apr1$x$y", "pw", ""])).map(":".join)),
                    max_size=6))
    def test_any_file(self, lines: list[str]) -> None:
        """Any text is users, or one ConfigError line naming the file and a line; never another error."""
        try:
            users = parse_htpasswd("\n".join(lines), "f")
        except ConfigError as e:
            self.assertNotIn("\n", str(e))
            self.assertRegex(str(e), r"^f: line \d+: ")
        else:
            for user, hashed in users.items():
                self.assertTrue(hashed.startswith(b"$2"))

    @given(st.dictionaries(names.filter(lambda n: not n.startswith("#")), st.just(HASH), max_size=5))
    def test_round_trip(self, entries: dict[str, str]) -> None:
        """A file of valid entries gives exactly its users."""
        text = "\n".join(f"{u}:{h}" for u, h in entries.items())
        self.assertEqual(parse_htpasswd(text, "f"), {u.strip(): h.encode() for u, h in entries.items()})


class TokensTests(SynchronousTestCase):

    def test_tokens(self) -> None:
        """user:token a line; a user may have several tokens; comments and blank lines skipped."""
        text = f"# ci\nci:{TOKEN}\n\nci:{TOKEN}x\nbob:{TOKEN}y\n"
        self.assertEqual(parse_tokens(text, "t"), [("ci", TOKEN.encode()), ("ci", (TOKEN + "x").encode()),
                                                   ("bob", (TOKEN + "y").encode())])

    def test_refused(self) -> None:
        """Short tokens, a token with spaces, a token twice: one line naming the line, never the token."""
        for text, fragment, line in [(f"ci:{'x' * (MIN_TOKEN - 1)}\n", "at least", 1),
                                     (f"# x\nci:{TOKEN} {TOKEN}\n", "without spaces", 2),
                                     (f"a:{TOKEN}\nb:{TOKEN}\n", "already a's", 2),
                                     ("no token here\n", "user:token", 1)]:
            message = str(self.assertRaises(ConfigError, parse_tokens, text, "tok"))
            self.assertTrue(message.startswith(f"tok: line {line}: "), message)
            self.assertIn(fragment, message)
            self.assertNotIn(TOKEN, message)

    @given(st.lists(st.tuples(names.filter(lambda n: not n.startswith("#")), tokens), max_size=6, unique_by=lambda p: p[1]))
    def test_round_trip(self, pairs: list[tuple[str, str]]) -> None:
        """A file of valid pairs gives exactly its pairs, in order."""
        text = "\n".join(f"{u}:{t}" for u, t in pairs)
        self.assertEqual(parse_tokens(text, "f"), [(u.strip(), t.encode()) for u, t in pairs])

    @settings(max_examples=300)
    @given(st.text(max_size=200))
    def test_any_text(self, text: str) -> None:
        """Any text is tokens, or one ConfigError line naming the file and a line."""
        try:
            parse_tokens(text, "f")
        except ConfigError as e:
            self.assertNotIn("\n", str(e))
            self.assertRegex(str(e), r"^f: line \d+: ")
