# -*- test-case-name: tests.test_startup -*-
"""
Start-up checks of the cache directory, after the store opened it.

A cache the daemon cannot write to would make every miss a 502 and every
commit fail, one log line at a time: better one clear line and a non-zero
exit at start (L{CacheDirUnusable}, which the command line turns into
``artifactvault: cannot use cache_dir …``). A filesystem with less than
L{LOW_DISK} free is a warning, in the log and on the status page: the cache
still works, and will fail downloads once the space is gone.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable

from artifactvault.status import low_disk_warning

#: A filesystem with fewer free bytes than this is full: nothing useful fits.
FULL = 1024 * 1024
#: Bytes written (and removed) to prove the cache can be written to.
PROBE = 64 * 1024


class CacheDirUnusable(Exception):
    """The cache directory cannot be written to, or its filesystem is full; the message says which."""


def check_cache_dir(root: str, tmp_dir: str, statvfs: Callable[[str], Any] = os.statvfs,
                    write: Callable[[int, bytes], int] = os.write) -> list[str]:
    """
    Prove that C{tmp_dir} (inside the cache C{root}) takes a file of
    L{PROBE} bytes and that the filesystem is not full; the warnings (less
    than 5 % free), or L{CacheDirUnusable}.
    """
    try:
        st = statvfs(root)
    except OSError as e:
        raise CacheDirUnusable(f"cannot use cache_dir {root}: {e.strerror}") from None
    free, size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    if free < FULL:
        raise CacheDirUnusable(f"cannot use cache_dir {root}: its filesystem is full "
                               f"({free} bytes free of {size})")
    path = os.path.join(tmp_dir, ".write-test")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            data = b"\0" * PROBE
            while data:
                data = data[write(fd, data):]
        finally:
            os.close(fd)
            os.unlink(path)
    except OSError as e:
        why = "its filesystem is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else \
            f"cannot write there ({e.strerror})"
        raise CacheDirUnusable(f"cannot use cache_dir {root}: {why}") from None
    low = low_disk_warning(root, (free, size))
    return [low] if low else []
