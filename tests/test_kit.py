"""
The test kit's own promises that the integration tests rely on
(tests/upstreams): here, that a server outlives the directory it was
started from, and that a running apt repository serves what its
definition says now.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from twisted.trial.unittest import TestCase

from tests import support


class KitTests(TestCase):
    timeout = 120

    def test_server_outlives_the_callers_directory(self) -> None:
        """
        pypi-up run from a directory that is then removed (a test run's
        _trial_temp): pypiserver still answers an unknown project with its
        404, not a 500 (its error pages read the working directory).
        """
        support.upstream_url("pypi")
        support.stop_upstream("pypi")
        self.addCleanup(support.upstream_url, "pypi")
        doomed = tempfile.mkdtemp(prefix="av-kit-cwd-")
        script = os.path.join(support.UPSTREAMS, "pypi-up")
        port = support.UPSTREAM_PORTS["pypi"]
        subprocess.run([script, support.upstream_dir("pypi"), str(port)], cwd=doomed, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(doomed)
        status, _, body = support.request("GET", f"http://127.0.0.1:{port}/simple/no-such-project/")
        self.assertEqual(status, 404, body[:200])

    def test_running_apt_kit_follows_its_definition(self) -> None:
        """
        apt-up started again for a repository server that runs, with another
        definition (here a package count): the repositories are built again
        under it, and it serves them; started a third time the same way, it
        only says it runs.
        """
        directory = tempfile.mkdtemp(prefix="av-kit-apt-")  # (gpg-agent's socket path must be short)
        self.addCleanup(shutil.rmtree, directory, True)
        port = support.free_port()
        script = os.path.join(support.UPSTREAMS, "apt-up")
        self.addCleanup(subprocess.run, [os.path.join(support.UPSTREAMS, "down"), directory],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up(packages: int) -> str:
            p = subprocess.run([script, directory, str(port)], env=dict(os.environ, APT_UP_PACKAGES=str(packages)),
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            return p.stdout + p.stderr

        def served() -> int:
            status, _, body = support.request(
                "GET", f"http://127.0.0.1:{port}/debian/dists/stable/main/binary-amd64/Packages")
            self.assertEqual(status, 200)
            return body.count(b"Package: ")

        up(3)
        self.assertEqual(served(), 3)
        out = up(4)
        self.assertIn("building the repositories", out)
        self.assertEqual(served(), 4)
        out = up(4)
        self.assertIn("already running", out)
        self.assertNotIn("building", out)
