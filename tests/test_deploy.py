"""
Tests for the packaging in C{Dockerfile} and C{deploy/}: the systemd unit
passes C{systemd-analyze verify}, the example config is valid, the image
builds (where a Docker engine runs; skipped otherwise, saying why).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from artifactvault import config as configmod
from artifactvault.backends import parse_backend
from tests import support

DEPLOY = os.path.join(support.REPO, "deploy")


class SystemdUnitTests(SynchronousTestCase):
    def test_verify(self) -> None:
        """systemd-analyze verify finds nothing to say of the unit (its ExecStart pointed at this twistd)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed here")
        with open(os.path.join(DEPLOY, "artifactvault.service")) as f:
            unit = f.read()
        self.assertIn("ExecStart=/opt/artifactvault/bin/twistd ", unit)
        for option in ("User=artifactvault", "Restart=on-failure", "ProtectSystem=strict",
                       "ReadWritePaths=/var/cache/artifactvault", "NoNewPrivileges=true"):
            self.assertIn(option + "\n", unit)
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "artifactvault.service")
        with open(path, "w") as f:
            f.write(unit.replace("/opt/artifactvault/bin/twistd", support.twistd()))
        p = subprocess.run([analyze, "verify", path], capture_output=True, text=True)
        self.assertEqual((p.returncode, p.stdout + p.stderr), (0, ""))


class ConfigTests(SynchronousTestCase):
    def test_example_config(self) -> None:
        """The config docker-compose.yml mounts is valid (its admin token from the environment)."""
        self.patch(os, "environ", {**os.environ, "ARTIFACTVAULT_ADMIN_TOKEN": "x" * 32})
        loaded = configmod.load(os.path.join(DEPLOY, "config.yml"), parse_backend)
        self.assertEqual(loaded.admin_token, "x" * 32)
        self.assertEqual([entry.type for entry in loaded.backends], ["pypi", "dockerhub"])


class DockerfileTests(TestCase):
    def test_dockerfile(self) -> None:
        """Slim base, a non-root user, the cache as a volume, a health check on /-/health."""
        with open(os.path.join(support.REPO, "Dockerfile")) as f:
            text = f.read()
        self.assertRegex(text, r"(?m)^FROM python:[0-9.]+-slim$")
        self.assertRegex(text, r"(?m)^USER artifactvault$")
        self.assertRegex(text, r"(?m)^VOLUME /var/cache/artifactvault$")
        self.assertIn("/-/health", re.search(r"(?ms)^HEALTHCHECK.*?$\n.*?$", text).group(0))

    def test_build(self) -> None:
        """The image builds, and its twistd knows the plugin."""
        docker = shutil.which("docker")
        if docker is None:
            raise SkipTest("no docker client here")
        info = subprocess.run([docker, "info"], capture_output=True, text=True)
        if info.returncode != 0:
            raise SkipTest("no Docker engine runs here (docker info: "
                           f"{(info.stderr.strip().splitlines() or ['failed'])[-1][:120]})")
        tag = "artifactvault-test:latest"
        p = subprocess.run([docker, "build", "-q", "-t", tag, support.REPO], capture_output=True, text=True,
                           timeout=900)
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        self.addCleanup(subprocess.run, [docker, "rmi", "-f", tag], capture_output=True)
        p = subprocess.run([docker, "run", "--rm", "--entrypoint", "twistd", tag, "artifactvault", "--help"],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        self.assertIn("--config", p.stdout)
