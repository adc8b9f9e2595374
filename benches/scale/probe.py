#!/usr/bin/env python3
"""The timing half of benches/scale.sh: when edges come to route a host.

  probe.py routed --edges A,B,... --host H [--timeout S]
      Seconds until every edge routes H (answers anything but 404), one line per edge, each polled every
      --every seconds (default 0.01).
  probe.py propagation --control URL --key KEY --edges A,B,... [--changes 100] [--rate 100] [--interval S]
      While sandboxes are created at --rate per second in the background, creates --changes more, one every
      --interval seconds, and measures, per edge, the time from control's answer to the first request on the
      new sandbox's host that the edge does not answer 404. Prints p50 and max per edge, in milliseconds.

Edges are host:port of their HTTP listeners. Connections are kept alive, so a poll costs a request, not a
connection; each edge is polled by its own thread (for propagation about once a millisecond). Standard
library only.
"""

import argparse
import http.client
import json
import sys
import threading
import time


class Client:
    """One kept-alive HTTP connection, reopened after any error."""

    def __init__(self, hostport, timeout=5.0):
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, headers=None, body=None):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status, data
            except (OSError, http.client.HTTPException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 1:
                    return None, b""
        return None, b""


def routes(client, host):
    status, _ = client.request("GET", "/", {"host": host})
    return status is not None and status != 404


def routed(args):
    edges = args.edges.split(",")
    start = time.monotonic()
    deadline = start + args.timeout
    out = [None] * len(edges)
    clients = [Client(e, timeout=1.0) for e in edges]
    threads = [
        threading.Thread(target=poll_one, args=(c, args.host, deadline, out, i, args.every))
        for i, c in enumerate(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for edge, at in zip(edges, out):
        print(f"{edge} {'timeout' if at is None else f'{at - start:.2f}'}")
    return 0 if all(at is not None for at in out) else 1


class Control:
    def __init__(self, url, key):
        self.client = Client(url.removeprefix("http://").rstrip("/"), timeout=30.0)
        self.headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}

    def create_sandbox(self):
        body = json.dumps({"address": "127.0.0.1", "default_visibility": "public"})
        status, data = self.client.request("POST", "/v1/sandboxes", self.headers, body)
        if status != 201:
            raise RuntimeError(f"control answered {status}: {data[:200]!r}")
        return json.loads(data)["id"]


def background_flow(control, rate, stop, counts):
    """Creates `rate` sandboxes a second until `stop` is set (paced against the clock, not slept blindly)."""
    started = time.monotonic()
    n = 0
    while not stop.is_set():
        due = started + n / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
            continue
        try:
            control.create_sandbox()
            counts["ok"] += 1
        except RuntimeError as e:
            counts["failed"] += 1
            counts["last_error"] = str(e)
        n += 1


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def propagation(args):
    edges = args.edges.split(",")
    clients = [Client(e, timeout=1.0) for e in edges]
    control = Control(args.control, args.key)
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    flow = threading.Thread(target=background_flow, args=(Control(args.control, args.key), args.rate, stop, counts))
    flow.start()
    flow_started = time.monotonic()
    samples = [[] for _ in edges]
    missed = [0] * len(edges)
    try:
        time.sleep(1.0)  # the flow is running before the first measured change
        for _ in range(args.changes):
            time.sleep(args.interval)
            host = f"1-{control.create_sandbox()}.sandbox.localhost"
            answered = time.monotonic()
            deadline = answered + args.timeout
            out = [None] * len(edges)
            threads = [
                threading.Thread(target=poll_one, args=(c, host, deadline, out, i)) for i, c in enumerate(clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for i, at in enumerate(out):
                if at is None:
                    missed[i] += 1
                else:
                    samples[i].append((at - answered) * 1000)
    finally:
        stop.set()
        flow.join()
    flow_secs = time.monotonic() - flow_started
    print(f"background flow: {counts['ok']} sandboxes created in {flow_secs:.1f} s "
          f"({counts['ok'] / flow_secs:.0f}/s), {counts['failed']} failed")
    if counts["failed"]:
        print(f"  last failure: {counts['last_error']}")
    worst_p50 = worst_max = 0.0
    for edge, s, m in zip(edges, samples, missed):
        if not s:
            print(f"{edge} no change routed within {args.timeout} s")
            worst_p50 = worst_max = float("inf")
            continue
        p50, mx = percentile(s, 50), max(s)
        worst_p50, worst_max = max(worst_p50, p50), max(worst_max, mx)
        print(f"{edge} propagation p50 {p50:.1f} ms, max {mx:.1f} ms over {len(s)} changes"
              + (f", {m} not routed within {args.timeout} s" if m else ""))
    print(f"all edges: worst p50 {worst_p50:.1f} ms, worst max {worst_max:.1f} ms")
    return 0 if not any(missed) else 1


def poll_one(client, host, deadline, out, i, every=0.001):
    """Sets out[i] to the moment (monotonic clock) the edge first routes `host`; leaves it None past the deadline."""
    while time.monotonic() < deadline:
        if routes(client, host):
            out[i] = time.monotonic()
            return
        time.sleep(every)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("routed")
    r.add_argument("--edges", required=True)
    r.add_argument("--host", required=True)
    r.add_argument("--timeout", type=float, default=300)
    # Cold starts take seconds; polling ten starting edges every millisecond took a fifth of a two-core
    # machine's CPU away from the edges being timed.
    r.add_argument("--every", type=float, default=0.01, help="seconds between polls of one edge")
    g = sub.add_parser("propagation")
    g.add_argument("--control", required=True)
    g.add_argument("--key", required=True)
    g.add_argument("--edges", required=True)
    g.add_argument("--changes", type=int, default=100)
    g.add_argument("--rate", type=float, default=100)
    g.add_argument("--timeout", type=float, default=10)
    g.add_argument("--interval", type=float, default=0.05, help="seconds between measured changes")
    args = p.parse_args()
    return routed(args) if args.cmd == "routed" else propagation(args)


if __name__ == "__main__":
    sys.exit(main())
