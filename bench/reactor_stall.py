#!/usr/bin/env python3
"""Does a big PyPI index page stall everyone else? A small hit's latency, idle and loaded.

  reactor_stall.py [--projects 620000] [--seconds 15] [--fetches 3] [--twistd PATH] [--json FILE]

Starts, all on 127.0.0.1 and in a temp dir: a small static upstream of its
own (this script with --serve: a generated PEP 503 root page of ~37 MB with
the default 620000 projects, and a 1 KiB file), and the vault (twistd -n
artifactvault) with an http backend /files/ and a PyPI backend /pypi/ on
that upstream (index_ttl 0, so every /pypi/ is fetched, parsed, stored and
rendered again). Then it times GETs of the cached 1 KiB file (a HIT, on one
kept-alive connection, every 10 ms): first idle for --seconds, then while
another client fetches /pypi/ over and over, until --fetches of those have
completed. Prints median, p99 and max of both, and the /pypi/ fetch times.
A vault that does no large work on its reactor keeps the loaded numbers
within a few milliseconds of the idle ones.
"""
import argparse
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def root_page(projects: int) -> bytes:
    """A PEP 503 project list like pypi.org's /simple/ (which is ~44 MB for ~600k projects)."""
    words = ["alpha", "beta", "django", "flask", "py", "tools", "client", "utils", "sdk", "lib"]
    lines = ['<!DOCTYPE html>\n<html>\n<head>\n<meta name="pypi:repository-version" content="1.0">',
             "<title>Simple index</title>\n</head>\n<body>"]
    for i in range(projects):
        name = f"{words[i % 10]}-{words[(i // 10) % 10]}-{i:06d}"
        lines.append(f'<a href="/simple/{name}/">{name}</a>')
    lines.append("</body>\n</html>\n")
    return "\n".join(lines).encode()


def serve(port: int, projects: int) -> None:
    """The static upstream (run as a subprocess, so its work is not on the bench's GIL)."""
    pages = {"/simple/": (root_page(projects), "text/html"),
             "/files/small.bin": (os.urandom(1024), "application/octet-stream")}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body, ctype = pages.get(self.path, (None, None))
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"root page: {len(pages['/simple/'][0])} bytes, {projects} projects", flush=True)
    server.serve_forever()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, path: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"reactor_stall: a server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"reactor_stall: nothing answered on port {port}")


def get(conn: http.client.HTTPConnection, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def sample(port: int, seconds: float, interval: float, until: "threading.Event | None" = None) -> list[float]:
    """Latencies (s) of a cached small file, every C{interval}, for C{seconds} or until C{until} is set."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    out = []
    end = time.monotonic() + seconds
    while (until.is_set() is False) if until is not None else time.monotonic() < end:
        t0 = time.perf_counter()
        status, headers, body = get(conn, "/files/small.bin")
        out.append(time.perf_counter() - t0)
        assert status == 200 and headers.get("X-Cache") == "HIT" and len(body) == 1024, (status, headers)
        time.sleep(interval)
    conn.close()
    return out


def summary(label: str, xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return (f"| {label} | {len(xs)} | {statistics.median(xs) * 1000:.2f} | {p99 * 1000:.2f} "
            f"| {xs[-1] * 1000:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", type=int, default=620000)
    ap.add_argument("--seconds", type=float, default=15.0, help="length of the idle phase")
    ap.add_argument("--fetches", type=int, default=3, help="/pypi/ fetches in the loaded phase")
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--twistd", default=os.path.join(REPO, ".venv", "bin", "twistd"))
    ap.add_argument("--json", help="append the raw numbers to this file")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.projects)
        return

    work = tempfile.mkdtemp(prefix="av-stall-")
    up_port, vault_port = free_port(), free_port()
    procs = []
    try:
        upstream = subprocess.Popen([sys.executable, __file__, "--serve", str(up_port),
                                     "--projects", str(args.projects)])
        procs.append(upstream)
        wait_up(up_port, "/files/small.bin", upstream)
        with open(os.path.join(work, "config.yml"), "w") as f:
            json.dump({"cache_dir": os.path.join(work, "cache"), "log_level": "warn", "backends": [
                {"type": "http", "config": {"prefix": "/files/", "base_url": f"http://127.0.0.1:{up_port}/files/"}},
                {"type": "pypi", "config": {"prefix": "/pypi/", "index_url": f"http://127.0.0.1:{up_port}/simple/",
                                            "index_ttl": 0, "timeout": 120, "idle_timeout": 120}},
            ]}, f)
        vault = subprocess.Popen([args.twistd, "-n", "--pidfile=", "artifactvault",
                                  "--config", os.path.join(work, "config.yml"),
                                  "--listen", f"tcp:{vault_port}:interface=127.0.0.1"],
                                 stdout=open(os.path.join(work, "twistd.log"), "wb"), stderr=subprocess.STDOUT,
                                 cwd=work, start_new_session=True)
        procs.append(vault)
        wait_up(vault_port, "/-/health", vault)
        conn = http.client.HTTPConnection("127.0.0.1", vault_port, timeout=120)
        for _ in range(2):
            get(conn, "/files/small.bin")
        t0 = time.perf_counter()
        status, _, body = get(conn, "/pypi/", {"Accept": "text/html"})
        assert status == 200, (status, body[:200])
        first = time.perf_counter() - t0
        conn.close()

        idle = sample(vault_port, args.seconds, args.interval)

        fetches: list[float] = []
        done = threading.Event()

        def load() -> None:
            c = http.client.HTTPConnection("127.0.0.1", vault_port, timeout=300)
            try:
                for _ in range(args.fetches):
                    t = time.perf_counter()
                    s, _, b = get(c, "/pypi/", {"Accept": "text/html"})
                    assert s == 200, (s, b[:200])
                    fetches.append(time.perf_counter() - t)
            finally:
                done.set()
                c.close()

        loader = threading.Thread(target=load)
        loader.start()
        loaded = sample(vault_port, 0, args.interval, until=done)
        loader.join()

        print(f"\nsmall cache hit (1 KiB, http backend) every {args.interval * 1000:g} ms, "
              f"idle and while /pypi/ ({args.projects} projects, {len(body)} bytes rendered) is fetched")
        print("| phase | samples | median ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|")
        print(summary("idle", idle))
        print(summary(f"during {len(fetches)} /pypi/ fetches", loaded))
        print(f"/pypi/ fetch: first {first:.2f} s, then " + ", ".join(f"{x:.2f}" for x in fetches) + " s")
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"label": "reactor stall", "idle_s": idle, "loaded_s": loaded,
                                    "pypi_fetch_s": [first] + fetches}) + "\n")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
