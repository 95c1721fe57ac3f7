# -*- test-case-name: tests.test_apt_gpg -*-
"""
Checking a Release's signature with ``gpgv`` against configured keyrings
(the apt backend's ``signed_by``), as apt does: a good signature by a key
in one of the keyrings, and none of the status words apt treats as failure
(a bad, expired or revoked signature or key, a missing key).

``gpgv`` runs as a child process (never blocking the reactor), for at most
L{TIMEOUT} seconds: one that does not answer by then (a stuck disk, a
broken wrapper script) is killed, and the check fails, rather than holding
the Release request, and every client waiting on it, for ever. The signed
file and the signature go to it through a private temporary directory,
removed once the child has ended. Clients verify every Release themselves; this is for a
vault that must refuse to hand out, or to keep, a Release its operator's
keyring does not vouch for.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol

GPGV = "gpgv"
#: Seconds gpgv may take for one check (it takes milliseconds) before it is killed and the check fails.
TIMEOUT = 30.0
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
        out, code = await _run(reactor, path, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    reason = verdict(out, code)
    if reason is not None:
        raise SignatureError(reason)


#: The most of gpgv's status output kept (a few lines per signature).
MAX_STATUS = 1 << 20


class _Gpgv(ProcessProtocol):
    """One gpgv run: its status output (stdout) collected, stderr dropped; C{ended} fires with its exit code."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.size = 0
        self.ended: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        if self.size < MAX_STATUS:
            self.out.append(data)
            self.size += len(data)

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(code if code is not None else -1)


async def _run(reactor: Any, path: str, args: list[str]) -> tuple[bytes, int]:
    """
    gpgv's status output and exit code; L{SignatureError} if it has not
    ended within L{TIMEOUT} seconds (it is killed, and waited for, first).
    """
    proto = _Gpgv()
    process = reactor.spawnProcess(proto, path, [path, *args], env={"LC_ALL": "C"})
    late: list[bool] = []

    def kill() -> None:
        late.append(True)
        try:
            process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    timer = reactor.callLater(TIMEOUT, kill)
    code = await proto.ended
    if timer.active():
        timer.cancel()
    if late:
        raise SignatureError(f"gpgv did not answer in {TIMEOUT:g} s (killed)")
    return b"".join(proto.out), code
