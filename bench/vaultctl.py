"""
bench/vault-ctl.sh from Python: what the benchmarks written in Python
share of it (the ones in shell call it themselves).
"""

from __future__ import annotations

import os
import subprocess
import sys

CTL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vault-ctl.sh")


def interpreter(twistd: str | None = None) -> str:
    """
    The Python that runs C{twistd} (default: vault-ctl's own, C{$AV_TWISTD}
    or the checkout's venv), as "Python 3.11.2 (/usr/bin/python3.11)": part
    of every benchmark's first line (``vault-ctl.sh python``).
    """
    env = dict(os.environ, AV_TWISTD=twistd) if twistd else None
    return subprocess.run([CTL, "python"], capture_output=True, text=True, env=env).stdout.strip()


def this_interpreter() -> str:
    """L{interpreter} for a vault this process starts with its own venv's twistd (tests.support's daemons)."""
    return interpreter(os.path.join(os.path.dirname(sys.executable), "twistd"))
