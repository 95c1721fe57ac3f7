"""
Tests for L{artifactvault.config}: the seed's YAML in, typed settings out,
and one readable line naming the file and the key for every mistake.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from artifactvault import config as configmod
from artifactvault.backends import parse_backend
from artifactvault.config import ConfigError, Section

SEED = """\
http_host: localhost
http_port: 8080
cache_dir: {cache}
log_level: DEBUG

backends:
  - type: http
    config:
      prefix: /test/
      base_url: https://httpbin.org
"""


class ConfigFileMixin:
    """Helpers to write a config file and load it."""

    def write(self, text: str | bytes) -> str:
        path = self.mktemp() + ".yml"
        with open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        return path

    def load(self, text: str | bytes) -> configmod.Config:
        return configmod.load(self.write(text), parse_backend)

    def load_data(self, data: object) -> configmod.Config:
        return self.load(yaml.safe_dump(data))

    def assertConfigError(self, text: str | bytes, *fragments: str) -> str:
        """Loading C{text} fails with one line naming the file and every fragment."""
        return config_error_at(self, self.write(text), *fragments)


def config_error_at(testcase: Any, path: str, *fragments: str) -> str:
    """Loading the config file C{path} fails with one line naming it and every fragment; the line."""
    error = testcase.assertRaises(ConfigError, configmod.load, path, parse_backend)
    message = str(error)
    testcase.assertNotIn("\n", message)
    testcase.assertTrue(message.startswith(path + ": "), message)
    for fragment in fragments:
        testcase.assertIn(fragment, message)
    return message


def http_backend(**config: object) -> dict:
    """A valid http backend item, with C{config} overriding its keys."""
    return {"type": "http", "config": {"prefix": "/files/", "base_url": "http://up.test/", **config}}


class LoadTests(ConfigFileMixin, SynchronousTestCase):

    def test_seed_config(self) -> None:
        """The seed's development config loads, with DEBUG read as debug."""
        cache = self.mktemp()
        config = self.load(SEED.format(cache=cache))
        self.assertEqual((config.http_host, config.http_port), ("localhost", 8080))
        self.assertEqual(config.cache_dir, os.path.abspath(cache))
        self.assertEqual(config.log_level, "debug")
        [settings] = config.settings
        self.assertEqual(settings.prefix, "/test/")
        self.assertEqual(settings.base_url, "https://httpbin.org")
        self.assertEqual(config.endpoints, ["tcp:8080:interface=localhost"])

    def test_defaults(self) -> None:
        """An empty file means loopback port 8080, level info, no backends."""
        config = self.load("")
        self.assertEqual(config.endpoints, ["tcp:8080:interface=127.0.0.1"])
        self.assertEqual(config.log_level, "info")
        self.assertEqual(config.backends, [])

    def test_embedded_default(self) -> None:
        """Without a file, the embedded default: loopback 8080, PyPI and Docker Hub."""
        def parse_any(entry: configmod.BackendEntry) -> dict:
            return {key: entry.section._get(key, None) for key in entry.section.data}

        config = configmod.load(None, parse_any)
        self.assertEqual(config.source, "<embedded default config>")
        self.assertEqual(config.endpoints, ["tcp:8080:interface=127.0.0.1"])
        self.assertEqual([(b.type, s["prefix"]) for b, s in zip(config.backends, config.settings)],
                         [("pypi", "/pypi/"), ("dockerhub", "/dockerhub/")])

    def test_listen_overrides_host_and_port(self) -> None:
        """Explicit listen descriptions replace http_host/http_port."""
        config = self.load("http_port: 9000\n")
        config.listen = ["tcp:1234", "unix:/tmp/s"]
        self.assertEqual(config.endpoints, ["tcp:1234", "unix:/tmp/s"])

    def test_ipv6_host(self) -> None:
        """The colons of an IPv6 http_host are escaped in the endpoint description."""
        config = self.load("http_host: '::1'\n")
        self.assertEqual(config.endpoints, [r"tcp:8080:interface=\:\:1"])

    def test_warning_level(self) -> None:
        """log_level 'warning' is accepted as 'warn'."""
        self.assertEqual(self.load("log_level: warning\n").log_level, "warn")

    def test_durations(self) -> None:
        """Durations are seconds or a number with s, m, h or d."""
        config = self.load_data({"backends": [http_backend(
            timeout=5, idle_timeout="2m", ttl="1.5h",
            ttl_rules=[{"match": "*.xml", "ttl": "1d"}])]})
        [s] = config.settings
        self.assertEqual((s.timeout, s.idle_timeout, s.ttl), (5.0, 120.0, 5400.0))
        self.assertEqual([(pattern, f.ttl) for pattern, f in s.ttl_rules], [("*.xml", 86400.0)])

    def test_prefix_normalised(self) -> None:
        """A prefix is normalised to /a/b/."""
        [s] = self.load_data({"backends": [http_backend(prefix="/a/b")]}).settings
        self.assertEqual(s.prefix, "/a/b/")

    def test_credentials_from_environment(self) -> None:
        """password_env and token_env read the named environment variables."""
        self.patch(os, "environ", {"AV_PASS": "s3cret", "AV_TOKEN": "tok"})
        [basic, bearer] = self.load_data({"backends": [
            http_backend(username="u", password_env="AV_PASS"),
            http_backend(prefix="/other/", token_env="AV_TOKEN")]}).settings
        self.assertEqual((basic.username, basic.password), ("u", "s3cret"))
        self.assertEqual(bearer.token, "tok")
        self.assertNotIn("s3cret", repr(basic))

    def test_headers(self) -> None:
        """Extra upstream headers are kept as strings."""
        [s] = self.load_data({"backends": [http_backend(headers={"X-Key": "v", "X-N": 3})]}).settings
        self.assertEqual(s.headers, {"X-Key": "v", "X-N": "3"})


class ErrorTests(ConfigFileMixin, SynchronousTestCase):
    """Each mistake is one line that names the file and the key."""

    def test_bad_yaml(self) -> None:
        """Invalid YAML names the line and column."""
        self.assertConfigError("backends: [\n  - type: http\n", "line ", "invalid YAML")

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is a config error, not a traceback."""
        self.assertConfigError(b"http_host: \xff\xfe\n", "UTF-8")

    def test_unreadable(self) -> None:
        """A missing file says it cannot be read."""
        path = self.mktemp()
        error = self.assertRaises(ConfigError, configmod.load, path, parse_backend)
        self.assertEqual(str(error), f"{path}: cannot read: No such file or directory")

    def test_top_level_not_mapping(self) -> None:
        """A document that is a list is refused."""
        self.assertConfigError("- a\n- b\n", "(top level): must be a mapping, not a list")

    def test_unknown_backend_type(self) -> None:
        """An unknown type names the item and the known types."""
        self.assertConfigError(yaml.safe_dump({"backends": [{"type": "ftp", "config": {}}]}),
                               "backends[0].type: unknown backend type 'ftp'", "http")

    def test_missing_base_url(self) -> None:
        """An http backend without base_url."""
        self.assertConfigError(yaml.safe_dump({"backends": [{"type": "http", "config": {"prefix": "/x/"}}]}),
                               "backends[0].config.base_url: required")

    def test_missing_type(self) -> None:
        """A backend item without a type."""
        self.assertConfigError("backends:\n  - config: {}\n", "backends[0].type: required")

    def test_wrong_types(self) -> None:
        """Values of the wrong type say what they are."""
        for data, fragment in [
            ({"http_port": "eighty"}, "http_port: must be an integer, not a string"),
            ({"http_port": True}, "http_port: must be an integer, not a boolean"),
            ({"http_port": 70000}, "http_port: must be at most 65535"),
            ({"backends": {"type": "http"}}, "backends: must be a list, not a mapping"),
            ({"backends": ["http"]}, "backends[0]: must be a mapping, not a string"),
            ({"log_level": "loud"}, "log_level: must be one of"),
            ({"backends": [http_backend(timeout="soon")]}, "backends[0].config.timeout: must be a duration"),
            ({"backends": [http_backend(ttl=-1)]}, "backends[0].config.ttl: must not be negative"),
            ({"backends": [http_backend(base_url="ftp://x/")]}, "base_url: must be an http:// or https:// URL"),
            ({"backends": [http_backend(prefix="files")]}, "backends[0].config.prefix: must be a path"),
            ({"backends": [http_backend(prefix="/a/../b/")]}, "backends[0].config.prefix: must be a path"),
            ({"backends": [http_backend(headers={"Bad Name": "x"})]}, "headers: 'Bad Name' is not a valid"),
            ({"backends": [http_backend(headers={"X": "a\nb"})]}, "headers.X: must be a one-line string"),
            ({"backends": [http_backend(ttl_rules={"*.xml": 5})]}, "ttl_rules: must be a list"),
            ({"backends": [http_backend(ttl_rules=[{"match": "*"}])]}, "ttl_rules[0].ttl: required"),
        ]:
            with self.subTest(data=data):
                self.assertConfigError(yaml.safe_dump(data), fragment)

    def test_duplicate_prefix(self) -> None:
        """Two backends at one prefix (after normalising) name both."""
        self.assertConfigError(
            yaml.safe_dump({"backends": [http_backend(prefix="/x/"), http_backend(prefix="/x")]}),
            "backends[1].config.prefix: /x/ is already used by backends[0]")

    def test_reserved_prefixes(self) -> None:
        """
        No backend, of any type, is mounted at or under /-/ (the vault's own
        pages) or /v2/ (the registry API): refused with one line naming the
        prefix key. /-/ used to be accepted (every path of the backend then
        answered 404), /v2/ beside a registry ended the start with a
        traceback from the resource tree.
        """
        items = {"http": {"base_url": "http://up.test/"}, "pypi": {}, "npm": {}, "registry": {},
                 "apt": {"mirror_url": "http://deb.test/debian"}}
        for kind, config in items.items():
            for prefix, message in (("/-/", "/-/ is the vault's own"), ("/-/x/", "/-/ is the vault's own"),
                                    ("/v2/", "/v2/ is the registry API's"), ("/v2/r", "/v2/ is the registry API's")):
                with self.subTest(kind=kind, prefix=prefix):
                    self.assertConfigError(
                        yaml.safe_dump({"backends": [{"type": "registry", "config": {"prefix": "/r/"}},
                                                     {"type": kind, "config": {"prefix": prefix, **config}}]}),
                        f"backends[1].config.prefix: {message}")
        config = self.load_data({"backends": [http_backend(prefix="/v2x/"), http_backend(prefix="/a/-/"),
                                              http_backend(prefix="/a/v2/")]})
        self.assertEqual([s.prefix for s in config.settings], ["/v2x/", "/a/-/", "/a/v2/"])

    def test_unknown_key_that_is_not_a_name(self) -> None:
        """
        An unknown key holding a line break (or any control character, or
        not a string) is shown quoted: the error stays one line, and cannot
        forge another (found by tests.test_path_properties).
        """
        message = self.assertConfigError(yaml.safe_dump({"ok\nartifactvault: fine": 1}),
                                         r": 'ok\nartifactvault: fine': unknown key")
        self.assertEqual(len(message.splitlines()), 1)
        self.assertConfigError(yaml.safe_dump({"backends": [http_backend(**{"a\rb": 1})]}),
                               r"backends[0].config.'a\rb': unknown key")
        self.assertConfigError("3: x\n", ": 3: unknown key")
        message = self.assertConfigError(yaml.safe_dump({"cache_dir": "/a", "tls_cert": "/x\ny", "tls_key": "/k"}),
                                         "tls_cert: cannot read /x\\ny: No such file")
        self.assertEqual(len(message.splitlines()), 1)

    def test_unknown_keys(self) -> None:
        """A key nobody reads is refused wherever it is."""
        for data, fragment in [
            ({"http_prot": 80}, ": http_prot: unknown key"),
            ({"backends": [{**http_backend(), "conifg": {}}]}, "backends[0].conifg: unknown key"),
            ({"backends": [http_backend(base_ulr="x")]}, "backends[0].config.base_ulr: unknown key"),
            ({"backends": [http_backend(ttl_rules=[{"match": "*", "ttl": 1, "x": 1}])]},
             "backends[0].config.ttl_rules[0].x: unknown key"),
        ]:
            with self.subTest(data=data):
                self.assertConfigError(yaml.safe_dump(data), fragment)

    def test_credentials_in_url(self) -> None:
        """Credentials inside base_url are refused, and not repeated in the message."""
        message = self.assertConfigError(
            yaml.safe_dump({"backends": [http_backend(base_url="https://u:hunter2@up.test/")]}),
            "base_url: must not hold credentials")
        self.assertNotIn("hunter2", message)

    def test_bad_upstream_urls(self) -> None:
        """
        A URL with a port Python cannot read (out of range, not a number, 0),
        an empty host or an unclosed IPv6 bracket is refused for every URL key
        of every backend and of the store, with one line naming that key: it
        used to pass, then end the start with a traceback (apt, registry) or
        fail every request (http, pypi, npm).
        """
        places = [("http", "base_url"), ("pypi", "index_url"), ("pypi", "json_api_url"),
                  ("npm", "registry_url"), ("registry", "registry_url"), ("apt", "mirror_url")]
        bad = [("http://x:99999/", "must have a port from 1 to 65535"),
               ("http://x:abc/", "must have a port from 1 to 65535"),
               ("http://x:0/", "must have a port from 1 to 65535"),
               ("http://:80/", "must be an http:// or https:// URL"),
               ("http://[::1/", "must be an http:// or https:// URL")]
        for kind, key in places:
            for url, message in bad:
                with self.subTest(kind=kind, key=key, url=url):
                    self.assertConfigError(
                        yaml.safe_dump({"backends": [{"type": kind, "config": {"prefix": "/x/", key: url}}]}),
                        f"backends[0].config.{key}: {message}")
        for url, message in bad:
            with self.subTest(key="store.endpoint_url", url=url):
                self.assertConfigError(
                    yaml.safe_dump({"store": {"type": "s3", "bucket": "bkt", "endpoint_url": url}}),
                    f": store.endpoint_url: {message}")
        ok = self.load_data({"backends": [http_backend(base_url="http://[::1]:8081/a/"),
                                          http_backend(prefix="/y/", base_url="https://up.test:/")]})
        self.assertEqual([s.base_url for s in ok.settings], ["http://[::1]:8081/a/", "https://up.test:/"])

    def test_one_backend_per_proxied_mirror(self) -> None:
        """
        Two apt backends that would answer proxy requests for the same host,
        port and mirror path (both by default, from one mirror_url) are
        refused, naming the second's hosts: the later one took them all,
        silently. Other paths on that host, or hosts: [], are fine.
        """
        def apt(prefix: str, mirror: str, **more: Any) -> dict[str, Any]:
            return {"type": "apt", "config": {"prefix": prefix, "mirror_url": mirror, **more}}
        self.assertConfigError(
            yaml.safe_dump({"backends": [apt("/a/", "http://deb.test/debian"), apt("/b/", "http://deb.test/debian/")]}),
            "backends[1].config.hosts: deb.test:80/debian is already claimed by backends[0]")
        self.assertConfigError(
            yaml.safe_dump({"backends": [apt("/a/", "http://deb.test/debian", hosts=["mirror.test:8080"]),
                                         apt("/b/", "http://other.test/debian", hosts=["Mirror.test:8080"])]}),
            "backends[1].config.hosts: mirror.test:8080/debian is already claimed by backends[0]")
        ok = self.load_data({"backends": [apt("/a/", "http://deb.test/debian"),
                                          apt("/b/", "http://deb.test/debian-security"),
                                          apt("/c/", "http://deb.test/debian", hosts=[])]})
        self.assertEqual(len(ok.settings), 3)

    def test_refused_url_named_without_its_password(self) -> None:
        """A URL refused for its scheme or host is named in the error without the password it holds."""
        for url in ("ftp://alice:hunter2@x/debian", "http://alice:hunter2@/debian"):
            with self.subTest(url=url):
                line = self.assertConfigError(
                    yaml.safe_dump({"backends": [{"type": "apt", "config": {"prefix": "/x/", "mirror_url": url}}]}),
                    "backends[0].config.mirror_url: must be an http:// or https:// URL", "***@")
                self.assertNotIn("hunter2", line)

    def test_credential_mistakes(self) -> None:
        """Conflicting or dangling credentials are refused without showing them."""
        self.patch(os, "environ", {"SET": "x"})
        for config, fragment in [
            ({"password": "hunter2"}, "password: is given without username"),
            ({"username": "u", "token": "hunter2"}, "token: give username/password or token"),
            ({"username": "u", "password": "hunter2", "password_env": "SET"},
             "give password or password_env"),
            ({"token_env": "UNSET"}, "token_env: environment variable UNSET is not set"),
            ({"token_env": ""}, "token_env: must name an environment variable"),
        ]:
            with self.subTest(config=config):
                message = self.assertConfigError(yaml.safe_dump({"backends": [http_backend(**config)]}),
                                                 fragment)
                self.assertNotIn("hunter2", message)


class SectionTests(SynchronousTestCase):
    """The typed accessors backends use for their own keys."""

    def section(self, **data: object) -> Section:
        return Section("f.yml", "backends[0].config", data)

    def test_optional_values(self) -> None:
        """Absent or null optional keys give their default."""
        s = self.section(a=None)
        self.assertIsNone(s.str("a", None))
        self.assertEqual(s.int("b", 7), 7)
        self.assertIsNone(s.seconds("c", None))
        self.assertIsNone(s.url("d", None))
        self.assertEqual(s.mapping("e", {}), {})
        self.assertIsNone(s.secret("f"))

    def test_bool(self) -> None:
        """Booleans are true/false only, and optional ones take their default."""
        s = self.section(yes=True, word="yes")
        self.assertIs(s.bool("yes"), True)
        self.assertIsNone(s.bool("absent", None))
        self.assertIn("word: must be true or false", str(self.assertRaises(ConfigError, s.bool, "word")))

    def test_choices(self) -> None:
        """A string outside its choices lists them."""
        error = self.assertRaises(ConfigError, self.section(mode="x").str, "mode", choices=("a", "b"))
        self.assertEqual(str(error), "f.yml: backends[0].config.mode: must be one of a, b, not 'x'")

    def test_nested_section_path(self) -> None:
        """A nested section's errors carry the whole key path."""
        inner = self.section(auth={"realm": 1}).section("auth")
        error = self.assertRaises(ConfigError, inner.str, "realm")
        self.assertEqual(str(error), "f.yml: backends[0].config.auth.realm: must be a string, not an integer")


class ShippedConfigTests(SynchronousTestCase):
    """The configs we ship load: the documented sample and the embedded default."""

    def test_embedded_default(self) -> None:
        """Without a config file: 127.0.0.1:8080, /pypi/ -> pypi.org and /dockerhub/ -> Docker Hub."""
        config = configmod.load(None, parse_backend)
        self.assertEqual(config.endpoints, ["tcp:8080:interface=127.0.0.1"])
        self.assertEqual([(e.type, s.prefix) for e, s in zip(config.backends, config.settings)],
                         [("pypi", "/pypi/"), ("dockerhub", "/dockerhub/")])
        self.assertEqual((config.settings[0].index_url, config.settings[1].registry_url),
                         ("https://pypi.org/simple/", "https://registry-1.docker.io"))

    def test_sample(self) -> None:
        """config-sample.yml, which shows every key, is a valid config."""
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config-sample.yml")
        config = configmod.load(path, parse_backend)
        self.assertTrue(config.backends)
        self.assertEqual(len(set(s.prefix for s in config.settings)), len(config.settings))


class SizeTests(SynchronousTestCase):
    """max_size and other sizes: bytes, or numbers with K/M/G/T (powers of 1024)."""

    def size(self, value: object) -> object:
        return Section("c.yml", "", {"max_size": value}).size("max_size", None)

    def test_sizes(self) -> None:
        for value, expected in ((1024, 1024), ("500M", 500 << 20), ("1.5G", 3 << 29), ("2TiB", 2 << 40),
                                ("10k", 10240), ("77", 77)):
            self.assertEqual(self.size(value), expected, value)
        self.assertIsNone(Section("c.yml", "", {}).size("max_size", None))

    def test_bad_sizes(self) -> None:
        for value, message in (("lots", "must be a size"), (0, "must be more than 0"), (True, "must be a size"),
                               ("-5G", "must be a size")):
            with self.assertRaises(ConfigError) as caught:
                self.size(value)
            self.assertIn(f"c.yml: max_size: {message}", str(caught.exception))


class ObjectSizeConfigTests(SynchronousTestCase):
    """max_object_size: the largest artifact stored."""

    def parse(self, **top: object) -> configmod.Config:
        return configmod.parse({"backends": [], **top}, "c.yml", parse_backend)

    def test_default_is_max_size(self) -> None:
        """Unset, it is max_size; without either, there is no limit."""
        self.assertEqual(self.parse(max_size="1G").max_object_size, 1 << 30)
        self.assertIsNone(self.parse().max_object_size)
        self.assertEqual(self.parse(max_object_size="2G").max_object_size, 2 << 30)
        self.assertEqual(self.parse(max_size="1G", max_object_size="100M").max_object_size, 100 << 20)

    def test_bad_values(self) -> None:
        """A bad value, or one above max_size, is one line naming the file and the key."""
        for top, message in (({"max_object_size": "big"}, "must be a size"),
                             ({"max_object_size": 0}, "must be more than 0"),
                             ({"max_size": "1G", "max_object_size": "2G"},
                              f"must not be more than max_size ({1 << 30} bytes), not {2 << 30}")):
            with self.assertRaises(ConfigError) as caught:
                self.parse(**top)
            self.assertEqual(str(caught.exception).split(": ", 2)[:2], ["c.yml", "max_object_size"])
            self.assertIn(message, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))


class StoreSectionTests(SynchronousTestCase):
    """The top-level store: section (disk by default, or an S3 bucket)."""

    def parse(self, **top: object) -> configmod.Config:
        return configmod.parse({"backends": [], **top}, "c.yml", parse_backend)

    def test_disk_by_default(self) -> None:
        """Without store:, entries are on the local disk (as before)."""
        self.assertEqual(self.parse().store.type, "disk")

    def test_s3(self) -> None:
        """type s3 with its keys; credentials from the named variables, never shown in repr."""
        self.patch(os, "environ", {"MY_KEY": "AKIA1", "MY_SECRET": "hush"})
        store = self.parse(store={"type": "s3", "endpoint_url": "http://127.0.0.1:9000", "bucket": "cache",
                                  "prefix": "fleet", "access_key_id_env": "MY_KEY",
                                  "secret_access_key_env": "MY_SECRET", "part_size": "32MiB",
                                  "lease_ttl": "10s", "redirect": True,
                                  "local_cache": {"dir": "/tmp/x", "max_size": "1G"}}).store
        self.assertEqual((store.bucket, store.prefix, store.access_key_id, store.secret_access_key,
                          store.part_size, store.lease_ttl, store.redirect, store.local_cache_max_size),
                         ("cache", "fleet/", "AKIA1", "hush", 32 << 20, 10.0, True, 1 << 30))
        self.assertNotIn("hush", repr(store))
        defaults = self.parse(store={"type": "s3", "bucket": "cache"}).store
        self.assertEqual((defaults.part_size, defaults.lease_ttl, defaults.redirect, defaults.prefix),
                         (16 << 20, 30.0, False, ""))

    def test_bad_values(self) -> None:
        """Each mistake is one line naming the file and the key."""
        self.patch(os, "environ", {"MY_KEY": "AKIA1"})
        for store, key, message in (
                ({"type": "ftp"}, "store.type", "must be one of disk, s3"),
                ({"type": "s3"}, "store.bucket", "required"),
                ({"type": "s3", "bucket": "Bad_Name"}, "store.bucket", "must be an S3 bucket name"),
                ({"type": "s3", "bucket": "b", "part_size": "1MiB"}, "store.bucket", "must be an S3 bucket"),
                ({"type": "s3", "bucket": "bkt", "part_size": "1MiB"}, "store.part_size", "between 5MiB"),
                ({"type": "s3", "bucket": "bkt", "access_key_id_env": "MY_KEY"}, "store.access_key_id_env",
                 "give both"),
                ({"type": "s3", "bucket": "bkt", "access_key_id_env": "NOPE"}, "store.access_key_id_env",
                 "NOPE is not set"),
                ({"type": "s3", "bucket": "bkt", "endpoint": "x"}, "store.endpoint", "unknown key"),
                ({"type": "s3", "bucket": "bkt", "lease_ttl": "0s"}, "store.lease_ttl", "at least 1s")):
            with self.assertRaises(ConfigError) as caught:
                self.parse(store=store)
            self.assertEqual(str(caught.exception).split(": ", 2)[:2], ["c.yml", key], store)
            self.assertIn(message, str(caught.exception))

    def test_max_size_is_the_buckets(self) -> None:
        """With a bucket, max_size is refused: its size is the bucket's (lifecycle rules)."""
        with self.assertRaises(ConfigError) as caught:
            self.parse(max_size="1G", store={"type": "s3", "bucket": "bkt"})
        self.assertIn("c.yml: max_size: with store type s3", str(caught.exception))
