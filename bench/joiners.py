#!/usr/bin/env python3
"""Clients joining a slow download in flight: how long each waits for its first byte.

  joiners.py --www WWW --file medium.bin --proxy BASE --upstream-dir DIR [-n 20] [--interval 0.25]

Hard-links WWW/FILE to a never-fetched name, starts one download through the
proxy (BASE/NAME), then starts another every INTERVAL seconds while the
throttled upstream is still sending. Each client's time to first byte is
measured from its own start (curl's time_starttransfer), so it is the wait
a client has on joining. Also: upstream GETs of the name (should be 1) and
whether every client got the whole file.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

HITS = os.environ.get("UPSTREAMS", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "..", "..", "shared", "upstreams")) + "/hits"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--www", required=True)
    ap.add_argument("--file", default="medium.bin")
    ap.add_argument("--proxy", required=True, help="base URL of the proxy mount of the throttled upstream")
    ap.add_argument("--upstream-dir", required=True)
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--label", default="joiners")
    ap.add_argument("--json")
    args = ap.parse_args()
    src = os.path.join(args.www, args.file)
    size = os.stat(src).st_size
    name = f"join-{uuid.uuid4().hex[:10]}.bin"
    os.link(src, os.path.join(args.www, name))
    fmt = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"
    procs = []
    try:
        for i in range(args.n):
            if i:
                time.sleep(args.interval)
            procs.append((time.monotonic(), subprocess.Popen(
                ["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", fmt, f"{args.proxy}/{name}"],
                stdout=subprocess.PIPE, text=True)))
        outs = [(t, p.communicate()[0].split()) for t, p in procs]
        time.sleep(0.3)  # nginx logs right after the response
        fetches = int(subprocess.run([HITS, args.upstream_dir, f"^GET /{name.replace('.', '[.]')}$"],
                                     capture_output=True, text=True, check=True).stdout)
    finally:
        os.unlink(os.path.join(args.www, name))
    ok = sum(1 for _, o in outs if o[0] == "200" and int(o[1]) == size)
    ttfb = [float(o[2]) for _, o in outs[1:]]
    first = float(outs[0][1][2])
    res = {"label": args.label, "n": args.n, "interval_s": args.interval, "size": size, "ok": ok,
           "upstream_fetches": fetches, "first_ttfb_s": first,
           "joiner_ttfb_s": {"median": statistics.median(ttfb), "max": max(ttfb)},
           "joined_at_s": [round(t - outs[0][0], 2) for t, _ in outs]}
    print(f"\n{args.label}: {args.n} clients, one every {args.interval} s, {args.file} ({size >> 20} MiB)")
    print("| upstream GETs | complete 200s | first client TTFB ms | joiners' TTFB median ms | joiners' TTFB max ms |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {fetches} | {ok}/{args.n} | {first * 1000:.1f} | {statistics.median(ttfb) * 1000:.1f} "
          f"| {max(ttfb) * 1000:.1f} |")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")
    if ok != args.n:
        sys.exit("joiners: not every client got the whole file")


if __name__ == "__main__":
    main()
