# -*- test-case-name: tests.test_store,tests.test_cache_dir -*-
"""
The node's spool: where downloads in flight are written, whatever the store.

A download streams into a temp file here; local clients tail it while it
grows (L{artifactvault.flight}), and the store is handed it to commit (the
disk store renames it into place, so its spool is inside its own directory;
an S3 store uploads it). It belongs to this node alone, so it is guarded
by an exclusive C{flock} on ``DIR/lock`` (held for the life of the process,
which is written into it), taken before ``tmp/`` is emptied: a second daemon
started on the same directory stops with L{CacheInUse} instead of deleting
the first one's downloads.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import os
import secrets

#: The lock file in the spool's directory.
LOCK_NAME = "lock"
#: Temp files made ahead of the downloads that will need them (L{Spool.prepare}): more
#: than apt's ten pipelined requests, which start that many downloads at once.
READY = 16
#: Downloads of at least this many announced bytes get their space reserved (L{Reservation}).
RESERVE_FROM = 1024 * 1024
#: How far ahead of its writes a download's space is reserved.
RESERVE_AHEAD = 64 * 1024 * 1024


class CacheInUse(Exception):
    """Another process holds the cache directory's lock."""

    def __init__(self, root: str, pid: int | None):
        super().__init__(f"{root}: in use by another artifactvault (pid {pid if pid else 'unknown'})")
        self.root = root
        self.pid = pid


class Spool:
    """Temp files for downloads under C{root}/tmp, and the directory's lock."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.tmp_dir = os.path.join(self.root, "tmp")
        self._lock_fd: int | None = None
        #: Downloads whose temp file or commit could not be written (disk full, I/O error).
        self.write_errors = 0
        #: The paths of empty temp files made ahead, for L{new_temp} to hand out.
        self._ready: list[str] = []

    def open(self) -> int:
        """
        Create the directory, take its lock (L{CacheInUse} if another process
        has it) and remove leftover temp files; returns how many held bytes:
        the downloads a stop cut short. An empty one was made ahead (the
        L{READY} a process that was killed left) or had its first bytes still
        to come: nothing was lost with it, and counted it made every start
        after a crash report sixteen downloads lost.
        """
        os.makedirs(self.tmp_dir, exist_ok=True)
        self._lock()
        removed = 0
        with os.scandir(self.tmp_dir) as found:
            for entry in found:
                try:
                    size = entry.stat(follow_symlinks=False).st_size
                    os.unlink(entry.path)
                except OSError:
                    continue
                removed += size > 0
        return removed

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        path = os.path.join(self.root, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.pread(fd, 32, 0).strip()
            os.close(fd)
            raise CacheInUse(self.root, int(raw) if raw.isdigit() else None) from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        self.mark_owner()

    def mark_owner(self) -> None:
        """
        Write this process's pid into the lock file (again when the service
        starts: twistd forks to daemonise after the lock was taken, and the
        forked process inherits it).
        """
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)

    def close(self) -> None:
        """Remove the temp files made ahead, and release the lock (the daemon holds it until it stops)."""
        while self._ready:
            try:
                os.unlink(self._ready.pop())
            except OSError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_failed(self) -> int:
        """Count a download the cache could not take (its temp file or its commit); the count since start."""
        self.write_errors += 1
        return self.write_errors

    def reservation(self, fd: int, length: int) -> "Reservation | None":
        """
        The space a download of C{length} announced bytes into C{fd} keeps
        reserved ahead of its writes (L{Reservation}), or None for a small
        one (a system call for a few blocks costs more than it saves).
        """
        return Reservation(fd, length) if length >= RESERVE_FROM else None

    def new_temp(self) -> tuple[str, int]:
        """A new temp file for a download: (path, fd open for reading and writing)."""
        while self._ready:
            path = self._ready.pop()
            try:
                return path, os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                continue  # (removed by hand: the next one, or a new one)
        return self._create()

    def prepare(self) -> None:
        """
        Make empty temp files ahead, up to L{READY}, for L{new_temp} to hand
        out. For a thread (the disk store's commits call it): creating a
        file is a journal transaction on the reactor, which waits for the
        GIL behind the committing thread when it comes back; opening one
        that exists is cheaper (a burst of cold misses served ~35% faster:
        docs/benchmarks.md). Not held open: the daemon's descriptors are
        the downloads' and the connections' only.
        """
        while len(self._ready) < READY:
            path, fd = self._create()
            os.close(fd)
            self._ready.append(path)

    def in_use(self) -> list[str]:
        """The names of the temp files in C{tmp/} other than those made ahead: downloads' (for tests, reports)."""
        ready = {os.path.basename(path) for path in self._ready}
        return sorted(name for name in os.listdir(self.tmp_dir) if name not in ready)

    def _create(self) -> tuple[str, int]:
        while True:
            path = os.path.join(self.tmp_dir, unique_name())
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
            except FileExistsError:
                continue
            return path, fd


#: A random part chosen once per process, so that a name made here is none
#: an earlier process made.
_PROCESS_PART = secrets.token_hex(6)
_counter = itertools.count()


def unique_name() -> str:
    """
    A part of a file name that no other made by this process (or, but for a
    2**-48 chance, by any earlier one) has: a temp file's name, a committed
    data file's, its metadata's temp file's. Not C{secrets.token_hex} each
    time: that is a C{getrandom} system call for every download, on the reactor.
    """
    return f"{_PROCESS_PART}{next(_counter):x}"


def _fallocate() -> object | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):  # (not Linux: nothing is reserved)
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    call.restype = ctypes.c_int
    return call


_FALLOCATE = _fallocate()
#: fallocate(2)'s flag that reserves blocks without changing the file's size.
FALLOC_FL_KEEP_SIZE = 1


def reserve(fd: int, offset: int, size: int) -> bool:
    """
    Reserve the disk blocks of C{fd}'s bytes C{offset} to C{offset + size}
    without changing its size (C{fallocate(2)} with C{FALLOC_FL_KEEP_SIZE}).
    False where it cannot be done (another system, a file system without it,
    no space): the writes then go on as they would have, and fail as they
    would have. Not C{os.posix_fallocate}, which grows the file, and writes
    zeros where the file system cannot reserve.
    """
    if _FALLOCATE is None:
        return False
    return _FALLOCATE(fd, FALLOC_FL_KEEP_SIZE, offset, size) == 0  # type: ignore[operator]


class Reservation:
    """
    A large download's disk space, reserved ahead of its writes: ext4 then no
    longer reserves blocks page by page as the reactor writes, about a
    quarter of the write's CPU (0.045 -> 0.032 s per 200 MiB; a cold 200 MiB
    download was 6-9% faster in three A/B runs and not in a fourth:
    docs/benchmarks.md). At most L{RESERVE_AHEAD} past what was written, up
    to the announced length: an upstream that announces more than it sends
    holds no more of the disk than that. Only a hint: once a reservation
    fails, no more are tried.
    """

    def __init__(self, fd: int, length: int):
        self._fd = fd
        self._length = length
        #: Reserved up to here (-1: a reservation failed, none is tried again).
        self.until = 0

    def before_write(self, offset: int, count: int) -> None:
        """C{count} bytes are about to be written at C{offset}: reserve the next stretch if they go past it."""
        if offset + count <= self.until or self.until < 0:
            return
        end = min(self._length, offset + count + RESERVE_AHEAD)
        if end <= offset:
            return  # (past the announced length: the download fails on its own)
        self.until = end if reserve(self._fd, offset, end - offset) else -1
