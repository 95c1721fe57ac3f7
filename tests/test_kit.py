"""
The test kit's own promises that the integration tests rely on
(tests/upstreams): here, that a server outlives the directory it was
started from.
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
