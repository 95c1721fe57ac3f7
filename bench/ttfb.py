#!/usr/bin/env python3
"""Time to first byte of a cold miss through the proxy vs a direct download.

  ttfb.py --www WWW --file large.bin --direct URL --proxy BASE [--rounds 7]

Alternates: a direct GET of URL, then a GET through the proxy of a
never-fetched hard link of the same file (a cold miss). Prints median TTFBs
and the median of the per-round differences (proxy - direct).
"""
import argparse
import json
import os
import statistics
import subprocess
import uuid


def ttfb(url: str) -> float:
    out = subprocess.run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w",
                          "%{http_code} %{time_starttransfer}", url],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "200", out
    return float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--www", required=True)
    ap.add_argument("--file", default="large.bin")
    ap.add_argument("--direct", required=True)
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--clean", help="shell command run before each round (not timed)")
    ap.add_argument("--json")
    args = ap.parse_args()
    direct, proxy = [], []
    for _ in range(args.rounds):
        if args.clean:
            subprocess.run(["bash", "-c", args.clean], check=True)
        name = f"ttfb-{uuid.uuid4().hex[:10]}.bin"
        os.link(os.path.join(args.www, args.file), os.path.join(args.www, name))
        try:
            direct.append(ttfb(args.direct))
            proxy.append(ttfb(f"{args.proxy}/{name}"))
        finally:
            os.unlink(os.path.join(args.www, name))
    diff = [p - d for p, d in zip(proxy, direct)]
    print(f"\ncold-miss time to first byte, {args.file}, {args.rounds} rounds alternating")
    print("| direct median ms | vault cold median ms | difference median ms | difference max ms |")
    print("|---:|---:|---:|---:|")
    print(f"| {statistics.median(direct) * 1000:.2f} | {statistics.median(proxy) * 1000:.2f} "
          f"| {statistics.median(diff) * 1000:.2f} | {max(diff) * 1000:.2f} |")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"label": "cold ttfb", "direct_s": direct, "proxy_s": proxy}) + "\n")


if __name__ == "__main__":
    main()
