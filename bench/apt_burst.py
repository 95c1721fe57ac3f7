#!/usr/bin/env python3
"""
The vault's own cost of a cold miss (issue 13's cold target): after an
``apt-get update`` through a fresh vault, one connection sends the GETs of
the kit repository's 50 pool files pipelined ten deep, as apt does; the
wall time, and the CPU time of the vault's reactor thread and of its other
threads (commits) over it, then the same 50 again (warm). With
``--compare DIR`` the same is measured for the checkout in DIR too (its
``artifactvault`` first on the path), in alternating rounds: an A/B of two
versions of the code on the same machine at the same time, where the
whole apt run (bench/apt_bench.py) is dominated by apt's own CPU and by
the machine's noise; with ``--compare-twistd PATH`` too, that build runs
under another twistd (another venv: another interpreter, with this code
or the other's). With ``--apt``, whole runs instead (issue 13's cold
and warm targets): a fresh ``apt-get update`` + ``install --download-only``
of the 50 packages through a fresh vault, then again (warm), and the same
against the repository directly, in alternating rounds; many rounds, since
on 2 shared cores the direct run alone varies by half from one to the next.
With ``--big``, the 200 MiB ``.deb`` cold (bench/apt_bench.py's ``big``:
curl to disk after an update through a fresh vault), per build and direct,
with the vault's CPU time per download. With ``--phases``, a cold run's
``apt-get update`` and ``install`` apart, each with apt's CPU time and the
vault's, and the time the vault's reactor waited for a CPU while it had work
(a busy machine's share), per build and direct.

    bench/apt_burst.py [--rounds 12] [--compare /path/to/other/checkout [--compare-twistd PATH]]
                       [--apt | --big | --phases]

Loopback only; the ports and data of bench/apt_bench.py (run under the same
``flock -o /tmp/av-bench.lock``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import statistics
import sys
import time
from typing import Callable, Iterator, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import apt_bench as b  # noqa: E402  (the repository, the vault's config, apt clients)
from vaultctl import interpreter  # noqa: E402

#: The twistd the caller named (None: vault-ctl's own choice, the checkout's venv).
GIVEN_TWISTD = os.environ.get("AV_TWISTD")

PATHS = [f"/debian/pool/main/a/{p}/{p}_1.0-1_all.deb" for p in b.PACKAGES]
DEPTH = 10


def burst(port: int) -> float:
    """Seconds for the 50 GETs, pipelined DEPTH deep on one connection, every answer a whole 200."""
    s = socket.create_connection(("127.0.0.1", port))
    buf, sent, got = b"", 0, 0
    started = time.monotonic()

    def send() -> None:
        nonlocal sent
        s.sendall(f"GET {PATHS[sent]} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        sent += 1
    while sent < DEPTH:
        send()
    while got < len(PATHS):
        data = s.recv(65536)
        if not data:
            raise RuntimeError(f"connection closed after {got} answers")
        buf += data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head = buf[:end].decode("latin-1").split("\r\n")
            if not head[0].startswith("HTTP/1.1 200"):
                raise RuntimeError(f"answer {got}: {head[0]}")
            length = int(next(h.split(":", 1)[1] for h in head if h.lower().startswith("content-length:")))
            if len(buf) < end + 4 + length:
                break
            buf, got = buf[end + 4 + length:], got + 1
            if sent < len(PATHS):
                send()
    s.close()
    return time.monotonic() - started


def thread_cpu(pid: int) -> dict[int, float]:
    """
    CPU seconds of each of C{pid}'s threads: the scheduler's nanoseconds on
    a CPU (``schedstat``), where ``stat``'s user + system time counts in
    clock ticks (10 ms here, as much as a burst's whole difference).
    """
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0]) / 1e9
        except FileNotFoundError:  # (no schedstat in this kernel: ticks)
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def run_queue_wait(tid: int) -> float:
    """
    Seconds thread C{tid} has spent runnable but waiting for a CPU
    (``schedstat``'s second field; 0 where the kernel keeps none): what a
    busy machine adds to the reactor's own CPU time.
    """
    try:
        with open(f"/proc/{tid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except FileNotFoundError:
        return 0.0


class Build(NamedTuple):
    """A version of the vault: the code of a checkout, run by a twistd (whose venv's Python runs it)."""

    checkout: str
    twistd: str | None  # (None: vault-ctl's own)

    def __str__(self) -> str:
        return f"{self.checkout}, {interpreter(self.twistd)}"


def use_twistd(twistd: str | None) -> None:
    """Make vault-ctl run C{twistd} (None: its own choice)."""
    if twistd is None:
        os.environ.pop("AV_TWISTD", None)
    else:
        os.environ["AV_TWISTD"] = twistd


def start_vault(build: Build) -> None:
    """A fresh vault (empty cache) running C{build} (its checkout first on the path of its twistd)."""
    os.environ["PYTHONPATH"] = build.checkout
    use_twistd(build.twistd)
    b.vault("reset")


@contextlib.contextmanager
def vaults() -> Iterator[None]:
    """Vaults started inside are stopped at the end, whatever happens."""
    try:
        yield
    finally:
        os.environ.pop("PYTHONPATH", None)
        use_twistd(GIVEN_TWISTD)
        b.vault("stop")


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--compare", help="another checkout, measured side by side")
    ap.add_argument("--compare-twistd", help="the twistd that runs the other checkout (default: this one's)")
    ap.add_argument("--apt", action="store_true", help="whole apt-get runs, and the repository directly")
    ap.add_argument("--big", action="store_true", help="the 200 MiB .deb cold, and the repository directly")
    ap.add_argument("--phases", action="store_true",
                    help="a cold run's update and install apart, with apt's and the vault's CPU time "
                         "and the reactor's run-queue wait")
    a = ap.parse_args()
    builds = {"this": Build(b.REPO, GIVEN_TWISTD)}
    if a.compare:
        builds["compare"] = Build(os.path.abspath(a.compare),
                                   os.path.abspath(a.compare_twistd) if a.compare_twistd else GIVEN_TWISTD)
    elif a.compare_twistd:
        ap.error("--compare-twistd goes with --compare")
    os.makedirs(b.AV, exist_ok=True)
    b.repo_up()
    if a.apt:
        whole_runs(builds, a.rounds)
        return
    if a.big:
        big_runs(builds, a.rounds)
        return
    if a.phases:
        phase_runs(builds, a.rounds)
        return
    runs: dict[str, dict[str, list[float]]] = {n: {"cold": [], "reactor": [], "others": [], "warm": []}
                                               for n in builds}
    with vaults():
        for r in range(a.rounds):
            for name in (list(builds) if r % 2 == 0 else list(builds)[::-1]):
                start_vault(builds[name])
                c = b.Client(b.URLS["vault"])
                c.ok("update")
                c.close()
                pid = b.vault_pid()
                before = thread_cpu(pid)
                runs[name]["cold"].append(burst(b.VAULT_PORT))
                during = thread_cpu(pid)
                time.sleep(0.3)  # (the commits' thread finishes its queue)
                after = thread_cpu(pid)
                runs[name]["reactor"].append(during[pid] - before.get(pid, 0.0))
                runs[name]["others"].append(sum(t - before.get(tid, 0.0) for tid, t in after.items() if tid != pid))
                runs[name]["warm"].append(burst(b.VAULT_PORT))
            print(f"round {r + 1}: " + ", ".join(f"{n} {runs[n]['cold'][-1] * 1000:.0f} ms" for n in builds),
                  file=sys.stderr)
        direct = [burst(b.UP_PORT) for _ in range(a.rounds)]
    med = statistics.median
    print(f"# 50 pool files pipelined {DEPTH} deep after an update, {a.rounds} alternating rounds, {stamp()}\n")
    print("| build | cold, ms | reactor CPU, ms | other threads' CPU, ms | warm, ms |\n|---|---|---|---|---|")
    for name, build in builds.items():
        m = {k: med(v) * 1000 for k, v in runs[name].items()}
        print(f"| {name} ({build}) | {m['cold']:.0f} | {m['reactor']:.0f} | {m['others']:.0f} | {m['warm']:.0f} |")
    print(f"| nginx, the repository directly | {med(direct) * 1000:.0f} | | | |")


def rotations(names: list[str], rounds: int) -> Iterator[tuple[int, list[str]]]:
    """Each round's order: the names rotated one further each round, so that each goes first in turn."""
    for r in range(rounds):
        yield r, names[r % len(names):] + names[:r % len(names)]


def alternate(builds: dict[str, Build], rounds: int, measure: Callable[[str], None],
              progress: Callable[[], str]) -> None:
    """
    C{rounds} rounds of C{measure(name)} for the repository directly and
    each build (a fresh vault of its code running around it), in rotated
    order; C{progress()} on stderr after each round.
    """
    with vaults():
        for r, order in rotations(["direct", *builds], rounds):
            for name in order:
                if name == "direct":
                    measure(name)
                    continue
                start_vault(builds[name])
                try:
                    measure(name)
                finally:
                    b.vault("stop")
            print(f"round {r + 1}: {progress()}", file=sys.stderr)


def label(name: str, builds: dict[str, Build]) -> str:
    return "the repository directly" if name == "direct" else f"{name} ({builds[name]})"


def whole_runs(builds: dict[str, Build], rounds: int) -> None:
    """Cold and warm apt-get update + install of the 50, per build and direct, alternating; a table."""
    names = ["direct", *builds]
    cold: dict[str, list[float]] = {n: [] for n in names}
    warm: dict[str, list[float]] = {n: [] for n in names}

    def measure(name: str) -> None:
        url = b.URLS["direct" if name == "direct" else "vault"]
        cold[name].append(b.update_install(name, url))
        warm[name].append(b.update_install(name, url))

    alternate(builds, rounds, measure, lambda: ", ".join(f"{n} {cold[n][-1]:.2f} s" for n in names))
    med = statistics.median
    print(f"# apt-get update + install --download-only of 50 packages, {rounds} alternating rounds, {stamp()}\n")
    print("| | cold, s | cold / direct | warm, s | warm / direct |\n|---|---|---|---|---|")
    for name in names:
        print(f"| {label(name, builds)} | {med(cold[name]):.3f} | {med(cold[name]) / med(cold['direct']):.2f}× "
              f"| {med(warm[name]):.3f} | {med(warm[name]) / med(warm['direct']):.2f}× |")


def phase_runs(builds: dict[str, Build], rounds: int) -> None:
    """
    A cold run split in its two phases, per build and direct, alternating:
    the wall time of C{apt-get update} and of C{install --download-only},
    apt's own CPU time in each (its processes', from C{getrusage}), the
    vault's (all its threads'), and how long the vault's reactor waited on
    the run queue (runnable, no CPU free); a table. Where the install loses, this says
    whether apt waited for the vault or did more work itself.
    """
    names = ["direct", *builds]
    keys = ("update", "apt_update", "vault_update", "wait_update", "install", "apt_install", "vault_install",
            "wait_install")
    got: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in names}

    def apt_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def measure(name: str) -> None:
        pid = None if name == "direct" else b.vault_pid()

        def vault_cpu() -> float:
            return sum(thread_cpu(pid).values()) if pid else 0.0

        def wait() -> float:  # (the reactor's: the daemon's main thread)
            return run_queue_wait(pid) if pid else 0.0
        c = b.Client(b.URLS["direct" if name == "direct" else "vault"])
        try:
            marks = [(time.monotonic(), apt_cpu(), vault_cpu(), wait())]
            c.ok("update")
            marks.append((time.monotonic(), apt_cpu(), vault_cpu(), wait()))
            c.ok("install", "--download-only", "-y", *b.PACKAGES)
            marks.append((time.monotonic(), apt_cpu(), vault_cpu(), wait()))
        finally:
            c.close()
        for phase, (start, end) in zip(("update", "install"), zip(marks, marks[1:])):
            got[name][phase].append(end[0] - start[0])
            got[name][f"apt_{phase}"].append(end[1] - start[1])
            got[name][f"vault_{phase}"].append(end[2] - start[2])
            got[name][f"wait_{phase}"].append(end[3] - start[3])

    alternate(builds, rounds, measure,
              lambda: ", ".join(f"{n} {got[n]['update'][-1] * 1000:.0f}+{got[n]['install'][-1] * 1000:.0f} ms"
                                for n in names))
    med = statistics.median
    print(f"# a cold apt-get update, then install --download-only of 50 packages, {rounds} alternating rounds, "
          f"{stamp()}\n")
    print("| | update, ms | apt's CPU, ms | the vault's CPU, ms | its reactor's run-queue wait, ms "
          "| install, ms | apt's CPU, ms | the vault's CPU, ms | its reactor's run-queue wait, ms |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for name in names:
        cells = [f"{med(got[name][k]) * 1000:.0f}" if name != "direct" or not k.startswith(("vault", "wait")) else ""
                 for k in keys]
        print(f"| {label(name, builds)} | " + " | ".join(cells) + " |")


def big_runs(builds: dict[str, Build], rounds: int) -> None:
    """The 200 MiB .deb cold per build and direct, alternating: MB/s and the vault's CPU seconds; a table."""
    names = ["direct", *builds]
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in builds}

    def measure(name: str) -> None:
        if name == "direct":
            rates[name].append(b.big("direct"))
            return
        pid = b.vault_pid()
        before = sum(thread_cpu(pid).values())
        rates[name].append(b.big("vault"))
        cpu[name].append(sum(thread_cpu(pid).values()) - before)

    alternate(builds, rounds, measure, lambda: ", ".join(f"{n} {rates[n][-1]:.0f} MB/s" for n in names))
    med = statistics.median
    print(f"# 200 MiB .deb cold, curl to disk, {rounds} alternating rounds, {stamp()}\n")
    print("| | MB/s | / direct | vault CPU (the update and the download), s |\n|---|---|---|---|")
    for name in names:
        spent = f"{med(cpu[name]):.2f}" if name in cpu else ""
        print(f"| {label(name, builds)} | {med(rates[name]):.0f} | {med(rates[name]) / med(rates['direct']):.2f}× | {spent} |")


if __name__ == "__main__":
    main()
