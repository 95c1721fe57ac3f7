"""
Bench only: run the daemon (``twistd`` and its arguments) with a memory
probe beside it, to tell live Python objects from memory the allocator
keeps. Never imported by the daemon itself.

    python bench/memprobe.py -n --pidfile= artifactvault --config FILE

With ``AV_MEMPROBE_DIR`` set, a thread watches that directory: for each
``ask-NAME`` file that appears (its text: ``snapshot`` or ``trim``) it
writes ``NAME.json`` with the process's RSS, the live objects by type
(``gc.get_objects()``, the frozen ones included), pymalloc's arenas, glibc's
``mallinfo2`` and, when the daemon runs under ``python -X tracemalloc``
(``AV_MEMPROBE_TRACE=1``), the traced Python allocations by line. ``trim``
then calls glibc's ``malloc_trim(0)`` and reports the RSS after it too.
A file, not a signal, so that the daemon's own handlers stay as they are.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import threading
import time
import tracemalloc


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallinfo2.restype = _Mallinfo2
        return libc
    except (OSError, AttributeError):
        return None


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024  # type: ignore[union-attr]


def pymalloc_arenas() -> dict[str, int]:
    """pymalloc's arena counts, from C{sys._debugmallocstats} (it writes to C stderr: fd 2 is redirected)."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    found = {}
    for key, pattern in (("arenas allocated total", r"# arenas allocated total\s+=\s+([\d,]+)"),
                         ("arenas reclaimed", r"# arenas reclaimed\s+=\s+([\d,]+)"),
                         ("arenas now", r"# arenas allocated current\s+=\s+([\d,]+)"),
                         ("arena bytes in use", r"bytes in allocated blocks\s+=\s+([\d,]+)"),
                         ("arena bytes free in pools", r"bytes in available blocks\s+=\s+([\d,]+)"),
                         ("arena bytes in free pools", r"unused pools \* \d+ bytes\s+=\s+([\d,]+)")):
        m = re.search(pattern, text)
        if m:
            found[key] = int(m.group(1).replace(",", ""))
    return found


def garbage() -> dict:
    """What a full collection finds unreachable now (cycles the collector has not yet reached), by type."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    counts = collections.Counter(type(o).__qualname__ for o in found)
    size = sum(sys.getsizeof(o) for o in found)
    del found
    gc.collect()
    return {"objects": sum(counts.values()), "MiB (getsizeof)": round(size / 2**20, 1),
            "by type": dict(counts.most_common(15))}


def report(action: str, libc: ctypes.CDLL | None) -> dict:
    before = {"rss MiB": round(rss_mib(), 1)}
    if libc is not None:
        before["glibc in use MiB"] = round(libc.mallinfo2().uordblks / 2**20, 1)
    cycles = garbage()
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    out: dict = {"time": time.time(), "rss MiB": round(rss_mib(), 1),
                 "gc objects": sum(counts.values()), "gc frozen": gc.get_freeze_count(),
                 "by type": dict(counts.most_common(60)), "pymalloc": pymalloc_arenas(),
                 "threads": threading.active_count(), "before collecting": before, "garbage": cycles}
    if libc is not None:
        mi = libc.mallinfo2()
        out["mallinfo2 MiB"] = {name: round(getattr(mi, name) / 2**20, 1) for name, _ in _Mallinfo2._fields_}
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        out["traced MiB"] = {"current": round(current / 2**20, 1), "peak": round(peak / 2**20, 1)}
        stats = tracemalloc.take_snapshot().statistics("lineno")
        out["traced top"] = [f"{s.size / 1024:.0f} KiB {s.count} blocks {s.traceback[0].filename}:"
                             f"{s.traceback[0].lineno}" for s in stats[:40]]
    if action == "trim" and libc is not None:
        started = time.perf_counter()
        libc.malloc_trim(0)
        out["malloc_trim ms"] = round((time.perf_counter() - started) * 1000, 2)
        out["rss MiB after trim"] = round(rss_mib(), 1)
    return out


def watch(directory: str) -> None:
    libc = _libc()
    done: set[str] = set()
    while True:
        for name in sorted(os.listdir(directory)):
            if name.startswith("ask-") and name not in done:
                done.add(name)
                with open(os.path.join(directory, name)) as f:
                    action = f.read().strip()
                result = report(action, libc)
                path = os.path.join(directory, name[4:] + ".json")
                with open(path + ".part", "w") as f:
                    json.dump(result, f, indent=1)
                os.rename(path + ".part", path)
        time.sleep(0.1)


def main() -> None:
    directory = os.environ.get("AV_MEMPROBE_DIR")
    if directory:
        threading.Thread(target=watch, args=(directory,), daemon=True, name="memprobe").start()
    from twisted.scripts.twistd import run
    sys.argv = ["twistd", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
