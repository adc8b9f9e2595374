#!/usr/bin/env python3
"""Medians of benches/proxies.sh's rounds as a Markdown table, with Portico's ratios to the baselines.

Rows `minimal-pingora+<N>ns` (the minimal proxy spending N ns more per request) calibrate the others: what
N ns of work measures as in this run, and Portico's extra over the minimal proxy read at that rate.

Input: the TSV the script writes, one line per (round, path, proxy):
round path proxy requests rps p50_ms p99_ms cpu_ticks non2xx errors
"""
import os
import re
import statistics
import sys
from collections import OrderedDict, defaultdict

CLK_TCK = os.sysconf("SC_CLK_TCK")


def main(path):
    runs = defaultdict(list)
    paths, proxies = OrderedDict(), OrderedDict()
    with open(path) as f:
        for line in f:
            rnd, p, proxy, req, rps, p50, p99, ticks, non2xx, errors = line.split("\t")
            paths.setdefault(p, None)
            proxies.setdefault(proxy, None)
            req = int(req)
            cpu_us = int(ticks) * 1e6 / CLK_TCK / req if req else float("nan")
            runs[(p, proxy)].append(
                dict(rps=float(rps), p50=float(p50), p99=float(p99), cpu=cpu_us,
                     bad=int(non2xx) + int(errors)))
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p50", "p99", "cpu")}
        | {"bad": sum(r["bad"] for r in v), "n": len(v)}
        for k, v in runs.items()
    }
    # The same proxy's speed drifts from minute to minute on a shared machine; rows measured in the same
    # round share that drift, so the median of per-round ratios is steadier than the ratio of medians.
    paired = defaultdict(list)
    for (p, proxy), v in runs.items():
        base = runs.get((p, "minimal-pingora"))
        if rated(proxy) and base:
            paired[(p, proxy)] = statistics.median(
                r["cpu"] / b["cpu"] for r, b in zip(v, base) if b["cpu"] == b["cpu"] and b["cpu"] > 0)
    rounds = max(m["n"] for m in med.values())
    print(f"Medians of {rounds} rounds. CPU = utime+stime of the proxy's processes per request (µs).")
    print("Ratios: req/s and CPU of each Portico (and calibration) row over the minimal Pingora proxy and over nginx;")
    print("\"paired\": the median over rounds of the ratio within each round.\n")
    print("| path | proxy | req/s | p50 ms | p99 ms | CPU µs/req | req/s ÷ min | req/s ÷ nginx "
          "| CPU ÷ min | CPU ÷ min, paired | CPU ÷ nginx | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in paths:
        base_min, base_ngx = med.get((p, "minimal-pingora")), med.get((p, "nginx"))
        for proxy in proxies:
            m = med.get((p, proxy))
            if not m:
                continue
            ratios = ["", "", "", "", ""]
            if rated(proxy):
                ratios = [
                    f"{m['rps'] / base_min['rps']:.2f}" if base_min else "",
                    f"{m['rps'] / base_ngx['rps']:.2f}" if base_ngx else "",
                    f"{m['cpu'] / base_min['cpu']:.2f}" if base_min else "",
                    f"{paired[(p, proxy)]:.2f}" if (p, proxy) in paired else "",
                    f"{m['cpu'] / base_ngx['cpu']:.2f}" if base_ngx else "",
                ]
            print(f"| {p} | {proxy} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu']:.1f} | "
                  + " | ".join(ratios) + f" | {m['bad']} |")
    calibrate(runs, paths, proxies)


def rated(proxy):
    """Rows that get ratio columns: Portico's, and the calibration's."""
    return proxy.startswith("portico") or CALIBRATION.fullmatch(proxy) is not None


CALIBRATION = re.compile(r"minimal-pingora\+(\d+)ns")


def calibrate(runs, paths, proxies):
    """What the calibration row's known extra work measured as, and Portico's extra read at that rate."""
    for proxy in proxies:
        m = CALIBRATION.fullmatch(proxy)
        spent = int(m.group(1)) / 1000 if m else 0
        if not spent:
            continue
        print(f"\nCalibration: {proxy} spends {spent:g} µs more CPU per request than minimal-pingora. "
              "Per path (WebSocket messages do not pass where it spins), the median over rounds of the "
              "paired difference:\n")
        print("| path | calibration: µs measured (× spent) | proxy | µs over minimal | ÷ that rate = own work µs |")
        print("|---|---:|---|---:|---:|")
        for p in paths:
            base, cal = runs.get((p, "minimal-pingora")), runs.get((p, proxy))
            # A WebSocket's messages never pass the hook that spins: only its handshake does.
            if p == "ws" or not base or not cal:
                continue
            measured = statistics.median(c["cpu"] - b["cpu"] for c, b in zip(cal, base))
            rate = measured / spent
            for other in proxies:
                if not other.startswith("portico") or (p, other) not in runs:
                    continue
                over = statistics.median(o["cpu"] - b["cpu"] for o, b in zip(runs[(p, other)], base))
                own = f"{over / rate:.1f}" if rate > 0.2 else "(rate too small to read)"
                print(f"| {p} | {measured:.1f} (× {rate:.1f}) | {other} | {over:.1f} | {own} |")


if __name__ == "__main__":
    main(sys.argv[1])
