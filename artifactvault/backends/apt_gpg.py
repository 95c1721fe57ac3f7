# -*- test-case-name: tests.test_apt_gpg -*-
"""
Checking a Release's signature with ``gpgv`` against configured keyrings
(the apt backend's ``signed_by``), as apt does: a good signature by a key
in one of the keyrings, and none of the status words apt treats as failure
(a bad, expired or revoked signature or key, a missing key).

``gpgv`` runs as a child process (never blocking the reactor); the signed
file and the signature go to it through a private temporary directory,
removed afterwards. Clients verify every Release themselves; this is for a
vault that must refuse to hand out, or to keep, a Release its operator's
keyring does not vouch for.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue

GPGV = "gpgv"
#: Status words (``--status-fd``) that make a signature unacceptable (apt's list).
BAD = ("BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY", "NODATA")


class SignatureError(Exception):
    """The signature does not hold; the message says why, for a client and the log."""


def gpgv_path() -> str | None:
    """Where ``gpgv`` is, or None (the backend's config refuses ``signed_by`` then)."""
    return shutil.which(GPGV)


def verdict(status: bytes, code: int) -> str | None:
    """
    None if gpgv's status output and exit code say a good signature, else
    the reason. (A signature by a key not in the keyrings is NO_PUBKEY.)
    """
    words = [line.split()[1].decode("ascii", "replace") for line in status.splitlines()
             if line.startswith(b"[GNUPG:] ") and len(line.split()) > 1]
    bad = [w for w in words if w in BAD]
    if bad:
        return "signature check failed (" + ", ".join(dict.fromkeys(bad)) + ")"
    if code != 0 or "GOODSIG" not in words or "VALIDSIG" not in words:
        return "no good signature by a key of the keyring"
    return None


async def verify(reactor: Any, keyrings: list[str], signed: bytes, signature: bytes | None = None) -> None:
    """
    Check C{signed} (a clear-signed InRelease, or with C{signature} the
    Release it detaches from) with gpgv against C{keyrings}; raises
    L{SignatureError} saying why it does not hold.
    """
    work = tempfile.mkdtemp(prefix="artifactvault-gpgv-")
    try:
        data = os.path.join(work, "data")
        with open(data, "wb") as f:
            f.write(signed)
        args = ["--homedir", work, "--status-fd", "1"]
        for keyring in keyrings:
            args += ["--keyring", keyring]
        if signature is not None:
            sig = os.path.join(work, "data.sig")
            with open(sig, "wb") as f:
                f.write(signature)
            args += [sig, data]
        else:
            args.append(data)
        path = gpgv_path()
        if path is None:
            raise SignatureError("gpgv is not installed")
        out, _err, code = await Deferred.fromCoroutine(_run(reactor, path, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    reason = verdict(out, code)
    if reason is not None:
        raise SignatureError(reason)


async def _run(reactor: Any, path: str, args: list[str]) -> tuple[bytes, bytes, int]:
    return await getProcessOutputAndValue(path, args, env={"LC_ALL": "C"}, reactor=reactor)
