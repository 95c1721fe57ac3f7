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
removed once the child has ended. Clients verify every Release
themselves; this is for a vault that must refuse to hand out, or to keep,
a Release its operator's keyring does not vouch for.

A keyring is what apt's ``signed-by=`` takes: binary OpenPGP packets (a
``.gpg`` file) or an ASCII-armored key (a ``.asc`` file, RFC 4880 6.2).
gpgv reads only the first, so an armored one is dearmored here (L{dearmor},
its CRC24 checked) into the check's private directory each time: like a
binary keyring, which gpgv reads afresh each time, an edited ``.asc`` is
used without a restart. L{check_keyring} refuses, at configuration, a file
that is neither.
"""

from __future__ import annotations

import base64
import binascii
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


class KeyringError(ValueError):
    """A keyring file that is neither binary OpenPGP nor a valid ASCII-armored public key."""


class KeyringUnusable(SignatureError):
    """
    A configured keyring cannot be used now (changed or removed since the
    config was read): the vault's own fault, not the signature's, and said
    so (the release files could not be checked, rather than failed).
    """


# -- keyrings -----------------------------------------------------------------------

ARMOR_BEGIN = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
ARMOR_END = b"-----END PGP PUBLIC KEY BLOCK-----"
_CRC24_INIT = 0xB704CE
_CRC24_POLY = 0x1864CFB


def _crc24_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= _CRC24_POLY
        table.append(crc & 0xFFFFFF)
    return table


_CRC24_TABLE = _crc24_table()


def crc24(data: bytes) -> int:
    """
    The OpenPGP armor checksum (RFC 4880 6.1) of C{data}, a byte at a time
    from a table (a keyring of many keys is checked on the reactor).
    """
    crc = _CRC24_INIT
    table = _CRC24_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ table[(crc >> 16) ^ byte]
    return crc


def is_armored(data: bytes) -> bool:
    """Whether C{data} is ASCII armor (of anything) rather than binary packets."""
    return data.lstrip().startswith(b"-----BEGIN PGP ")


def dearmor(data: bytes) -> bytes:
    """
    The binary packets of the ASCII-armored public key blocks in C{data}
    (several blocks, as ``cat a.asc b.asc`` makes, are joined), as ``gpg
    --dearmor`` gives them: armor headers skipped, the base64 body decoded
    strictly and checked against its CRC24 line when it has one. Raises
    L{KeyringError} saying what is wrong: no public key block, one that does
    not end, a body that is not base64, a checksum that does not match.
    Text outside the blocks is ignored, as gpg ignores it.
    """
    lines = [line.strip() for line in data.splitlines()]
    out: list[bytes] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith(b"-----BEGIN PGP "):
            i += 1
            continue
        if lines[i] != ARMOR_BEGIN:
            raise KeyringError(f"armor of another kind ({lines[i][5:-5].decode('ascii', 'replace')}), "
                               f"not a public key block")
        i += 1
        if i < len(lines) and b": " in lines[i]:  # armor headers ("Comment: ..."), up to a blank line
            while i < len(lines) and lines[i]:
                i += 1
        body: list[bytes] = []
        checksum: bytes | None = None
        while i < len(lines) and lines[i] != ARMOR_END:
            line = lines[i]
            i += 1
            if not line:
                continue
            if checksum is not None:
                raise KeyringError("armor with text after its checksum line")
            if line.startswith(b"=") and len(line) == 5:
                checksum = line[1:]
            else:
                body.append(line)
        if i == len(lines):
            raise KeyringError("armor without its END PGP PUBLIC KEY BLOCK line")
        i += 1
        try:
            packets = base64.b64decode(b"".join(body), validate=True)
            crc = base64.b64decode(checksum, validate=True) if checksum is not None else None
        except (binascii.Error, ValueError):
            raise KeyringError("armor whose body is not base64") from None
        if not packets:
            raise KeyringError("armor with an empty body")
        if crc is not None and (len(crc) != 3 or int.from_bytes(crc, "big") != crc24(packets)):
            raise KeyringError("armor whose checksum (CRC24) does not match its body")
        out.append(packets)
    if not out:
        raise KeyringError("no BEGIN PGP PUBLIC KEY BLOCK line")
    return b"".join(out)


def _is_binary_keyring(data: bytes) -> bool:
    """Binary OpenPGP packets (their first byte has bit 7 set, RFC 4880 4.2), or a GnuPG keybox file."""
    return bool(data) and (data[0] & 0x80 != 0 or data[8:12] == b"KBXf")


def check_keyring(path: str) -> None:
    """
    Refuse (L{KeyringError}, or OSError when it cannot be read) a keyring
    file gpgv could not use even once dearmored: empty, not OpenPGP, or
    armor that does not hold.
    """
    with open(path, "rb") as f:
        _binary_keyring(f.read())


def _binary_keyring(data: bytes) -> bytes:
    """A keyring file's bytes as gpgv takes them (dearmored), or L{KeyringError} saying why it cannot."""
    if is_armored(data):
        return dearmor(data)
    if not data:
        raise KeyringError("the file is empty")
    if not _is_binary_keyring(data):
        raise KeyringError("neither a binary OpenPGP keyring (.gpg) nor an ASCII-armored key (.asc)")
    return data


def _keyring_args(keyrings: list[str], work: str) -> list[str]:
    """
    gpgv's ``--keyring`` options: binary keyrings as they are, armored ones
    dearmored into C{work}. Each is checked as at start (L{check_keyring}):
    one emptied or overwritten since would otherwise reach gpgv, whose
    answer ("no good signature") would blame the mirror's files.
    """
    args = []
    for n, keyring in enumerate(keyrings):
        try:
            with open(keyring, "rb") as f:
                data = f.read()
            plain = _binary_keyring(data)
            if plain is not data:
                keyring = os.path.join(work, f"keyring-{n}.gpg")
                with open(keyring, "wb") as f:
                    f.write(plain)
        except (OSError, KeyringError) as e:
            reason = e.strerror if isinstance(e, OSError) else str(e)
            raise KeyringUnusable(f"cannot use the keyring {keyring}: {reason}") from None
        args += ["--keyring", keyring]
    return args


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
    path = gpgv_path()
    if path is None:
        raise SignatureError("gpgv is not installed")
    work = tempfile.mkdtemp(prefix="artifactvault-gpgv-")
    try:
        data = os.path.join(work, "data")
        with open(data, "wb") as f:
            f.write(signed)
        args = ["--homedir", work, "--status-fd", "1", *_keyring_args(keyrings, work)]
        if signature is not None:
            sig = os.path.join(work, "data.sig")
            with open(sig, "wb") as f:
                f.write(signature)
            args += [sig, data]
        else:
            args.append(data)
        proto = _Gpgv()
        process = reactor.spawnProcess(proto, path, [path, *args], env={"LC_ALL": "C"})
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    proto.ended.addBoth(lambda code: (shutil.rmtree(work, ignore_errors=True), code)[1])  # (once it is gone)
    out, code = await _bounded(reactor, proto, process)
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


def _bounded(reactor: Any, proto: _Gpgv, process: Any) -> Deferred:
    """
    Fires with gpgv's (status output, exit code), or fails with
    L{SignatureError} once L{TIMEOUT} seconds have passed: then the process
    is killed and the check fails at once, not when it has ended (a process
    stuck in the kernel, on a dead disk, ends only when that returns); the
    reactor reaps it, and its directory is removed, whenever it ends.
    """
    result: Deferred = Deferred()

    def expire() -> None:
        try:
            process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        result.errback(SignatureError(f"gpgv did not answer in {TIMEOUT:g} s (killed)"))

    timer = reactor.callLater(TIMEOUT, expire)

    def ended(code: int) -> None:
        if timer.active():
            timer.cancel()
            result.callback((b"".join(proto.out), code))

    proto.ended.addCallback(ended)
    return result
