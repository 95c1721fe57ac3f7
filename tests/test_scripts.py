"""
The repository's scripts, beside the package: each at least starts.

The benchmarks (``bench/``), ``dev.sh`` and the CI entry point are run by
hand or by CI, not by the other tests, so a script broken by a change
elsewhere (a function renamed in ``artifactvault`` or ``tests.support``
that a benchmark imports, a syntax error in a shell script) would be found
only by the next person to run it. Here every Python script with a main
part answers ``--help`` with its usage and exit status 0 (which imports
what it imports at the top, and parses its arguments), and every shell
script and the one JavaScript module parse (``bash -n``, ``node --check``),
without running a benchmark.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_scripts() -> list[str]:
    """The Python files in C{bench/} that run as a script (a library such as vaultctl.py has no main part)."""
    found = []
    for path in sorted(glob.glob(os.path.join(REPO, "bench", "*.py"))):
        with open(path, encoding="utf-8") as f:
            if 'if __name__ == "__main__":' in f.read():
                found.append(path)
    return found


def _shell_scripts() -> list[str]:
    """The shell scripts of the repository that no test runs as a whole (the kit's start scripts are run by the tests)."""
    paths = [os.path.join(REPO, "dev.sh"), os.path.join(REPO, ".ci", "run")]
    paths += sorted(glob.glob(os.path.join(REPO, "bench", "*.sh")))
    paths += sorted(glob.glob(os.path.join(REPO, "bench", "peers", "*.sh")))
    return paths


class ScriptsStartTests(SynchronousTestCase):
    def test_python_scripts_answer_help(self) -> None:
        scripts = _python_scripts()
        # (the benchmarks there now: a glob that found nothing would pass by checking nothing)
        self.assertGreaterEqual(len(scripts), 10)
        with tempfile.TemporaryDirectory() as scratch:
            # (AV: where bench/apt_bench.py keeps its data and empties its trash at exit)
            env = dict(os.environ, AV=scratch)
            failed = []
            for path in scripts:
                done = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True,
                                      env=env, cwd=scratch, timeout=120)
                if done.returncode != 0 or "usage" not in done.stdout.lower():
                    failed.append(f"{os.path.relpath(path, REPO)}: exit {done.returncode}\n"
                                  f"{(done.stdout + done.stderr)[-800:]}")
            self.assertEqual(failed, [])

    def test_shell_scripts_parse(self) -> None:
        scripts = _shell_scripts()
        self.assertGreaterEqual(len(scripts), 5)
        failed = []
        for path in scripts:
            done = subprocess.run(["bash", "-n", path], capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                failed.append(f"{os.path.relpath(path, REPO)}: {done.stderr.strip()}")
        self.assertEqual(failed, [])

    def test_javascript_parses(self) -> None:
        # (node is installed by the kit's set-up, tests/upstreams/npm-kit-install, as dev.sh test runs it)
        node = shutil.which("node")
        self.assertIsNotNone(node, "node is not on the PATH: dev.sh test installs it (tests/upstreams/npm-kit-install)")
        scripts = sorted(glob.glob(os.path.join(REPO, "bench", "*.mjs")))
        self.assertNotEqual(scripts, [])
        for path in scripts:
            done = subprocess.run([node, "--check", path], capture_output=True, text=True, timeout=60)
            self.assertEqual(done.returncode, 0, f"{os.path.relpath(path, REPO)}: {done.stderr.strip()}")
