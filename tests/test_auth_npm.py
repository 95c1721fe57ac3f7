"""
npm with credentials through the real daemon (client authentication,
issue 10): ``_authToken`` (a bearer token) and ``_auth`` (Basic
user:password) in the user config, scoped to the vault's registry URL,
against the kit's verdaccio; without them npm is refused.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

from tests import support
from tests.test_auth_clients import PASSWORD, TOKEN, write_credentials
from tests.test_npm_clients import NPM, NpmClient, installed


class NpmAuthTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        if NPM is None:
            raise SkipTest("npm is not installed")
        tmp = tempfile.mkdtemp(prefix="av-auth-npm-")
        self.addCleanup(shutil.rmtree, tmp, True)
        htpasswd, tokens = write_credentials(tmp)
        self.d = support.Daemon([{"type": "npm", "config": {"prefix": "/npm/",
                                                            "registry_url": support.upstream_url("npm") + "/",
                                                            "access": "authenticated"}}],
                                auth={"htpasswd": htpasswd, "tokens_file": tokens})
        self.addCleanup(self.d.cleanup)
        self.d.start()
        self.registry = self.d.url("/npm/")
        self.posts_before = support.hits("npm", "^POST /-/npm/v1/security/advisories/bulk")

    def client(self, *lines: str) -> NpmClient:
        npm = NpmClient(self, self.registry)
        with open(npm.userconfig, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        return npm

    def test_auth_token(self) -> None:
        """_authToken for the vault's registry URL: npm sends it as a bearer token and installs."""
        npm = self.client(f"//127.0.0.1:{self.d.port}/npm/:_authToken={TOKEN}")
        proj = npm.project()
        npm.run(proj, "install", "av-app")
        self.assertEqual(installed(proj, "@av/base"), "1.1.0")

    def test_basic_auth(self) -> None:
        """_auth (base64 user:password) for the vault's registry URL: npm installs."""
        auth = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        npm = self.client(f"//127.0.0.1:{self.d.port}/npm/:_auth={auth}")
        proj = npm.project()
        npm.run(proj, "install", "av-app")
        self.assertEqual(installed(proj, "av-app"), "1.1.0")

    def test_audit_needs_credentials(self) -> None:
        """npm audit's POST (relayed upstream, not through the usual dispatch) needs credentials too;
        with them it is relayed."""
        url = self.d.url("/npm/-/npm/v1/security/advisories/bulk")
        body = json.dumps({"av-app": ["1.1.0"]}).encode()
        status, headers, _ = support.request("POST", url, {"Content-Type": "application/json"}, body=body)
        self.assertEqual(status, 401)
        self.assertIn("www-authenticate", headers)
        self.assertEqual(self.up_posts(), 0)
        status, _, _ = support.request("POST", url, {"Content-Type": "application/json",
                                                     "Authorization": f"Bearer {TOKEN}"}, body=body)
        self.assertNotIn(status, (401, 403))
        self.assertEqual(self.up_posts() or support.wait_for_hits("npm", "^POST /-/npm/v1/security/advisories/bulk",
                                                                  self.posts_before + 1) - self.posts_before, 1)

    def up_posts(self) -> int:
        return support.hits("npm", "^POST /-/npm/v1/security/advisories/bulk") - self.posts_before

    def test_no_credentials(self) -> None:
        """Without credentials npm is refused with the vault's 401."""
        npm = self.client()
        p = npm.run(npm.project(), "install", "av-app", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("401", p.stdout + p.stderr)
