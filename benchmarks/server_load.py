"""A bounded load test of the demo server, on loopback only.

    .venv/bin/python -m benchmarks.server_load [--clients 24 --duration_s 60 --steps 300 --json load.json]

Starts `python -m demos.glue_demo` (the embedded model, its default limits) on
127.0.0.1, then `--clients` threads send, until `--duration_s` has passed (and
at most `--max_requests` in all), a mix of SIG interpretations and quick
requests (`/get_info`, `/get_dataset`, `/get_preds`), each waiting at most
`--request_timeout_s` for its answer. It reports the status counts (5xx other
than 503 must be none, and no request unanswered), how long answers took (SIG
200s, 503s refused at once and 503s at the deadline, quick requests), whether
every SIG 200 equals the same request sent alone after the load (up to float32
rounding: 1e-5 of the scores' scale), how long those took alone, and the
server's resident memory before, at its highest during, and after the load.
Stops the server at the end.
"""

import argparse
import collections
import concurrent.futures
import json
import math
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from lit_sig.lit import registry

REPO = pathlib.Path(__file__).resolve().parents[1]
DATASET = "sentences"
ALONE_TRIES = 3
RELATIVE_TOLERANCE = 1e-5  # Of the largest magnitude in a list of scores: float32 rounding of other batches.


def call(base: str, route: str, params: dict[str, str] | None, body: Any, timeout: float) -> tuple[int, bytes]:
    """One POST (or GET without a body); returns the status and body (status 0: no answer)."""
    url = base + route + ("?" + urllib.parse.urlencode(params) if params else "")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def sig_requests(model: str, ids: list[str], steps: int) -> list[tuple[str, dict, dict]]:
    """One SIG request per example id: (route, params, body)."""
    params = {
        "model": model,
        "dataset_name": DATASET,
        "interpreter": registry.display_name("sig"),
        "do_predict": "1",
    }
    config = {"Interpolation steps": steps, "Normalize": False}
    return [("/get_interpretations", params, {"inputs": [i], "config": config}) for i in ids]


def quick_requests(model: str, ids: list[str]) -> list[tuple[str, dict | None, dict | None]]:
    return [
        ("/get_info", None, None),
        ("/get_dataset", {"dataset_name": DATASET}, None),
        ("/get_preds", {"model": model, "dataset_name": DATASET}, {"inputs": ids[:2]}),
    ]


def timed(base: str, request: tuple, timeout: float) -> tuple[int, bytes, float]:
    start = time.monotonic()
    status, body = call(base, *request, timeout=timeout)
    return status, body, time.monotonic() - start


def mismatch(got: Any, want: Any, rel: float = RELATIVE_TOLERANCE) -> str | None:
    """Where `got` differs from `want` (None if equal): numbers up to `rel` of the largest magnitude in their list.

    Batch composition changes the last bits of float32 results, so a request served beside others may differ
    from the same request alone by rounding; anything else (tokens, keys, lengths) must be equal.
    """
    if isinstance(want, list) and want and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in want):
        if not (isinstance(got, list) and len(got) == len(want)):
            return f"{got!r:.80} vs {want!r:.80}"
        scale = max(abs(v) for v in want) or 1.0
        worst = max(abs(g - w) if isinstance(g, (int, float)) else math.inf for g, w in zip(got, want))
        return None if worst <= rel * scale else f"differs by {worst:.3g} at scale {scale:.3g}"
    if isinstance(want, dict):
        if not isinstance(got, dict) or got.keys() != want.keys():
            return f"keys {sorted(got) if isinstance(got, dict) else got!r:.80} vs {sorted(want)!r:.80}"
        return next((f"{k}: {m}" for k in want if (m := mismatch(got[k], want[k], rel))), None)
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return f"{got!r:.80} vs {want!r:.80}"
        return next((f"[{i}] {m}" for i, (g, w) in enumerate(zip(got, want)) if (m := mismatch(g, w, rel))), None)
    return None if got == want else f"{got!r:.80} vs {want!r:.80}"


def percentiles(values: list[float]) -> dict[str, float] | None:
    """Count, median, 95th percentile and maximum of `values` (seconds), rounded to ms."""
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    median, slowest = statistics.median(ordered), ordered[-1]
    return {"n": len(ordered), "p50": round(median, 3), "p95": round(p95, 3), "max": round(slowest, 3)}


def run_load(
    base: str,
    model: str,
    *,
    clients: int,
    duration_s: float,
    max_requests: int,
    steps: int,
    sig_share: float = 0.5,
    request_timeout_s: float = 60,
    rss: Any = None,
    backoff_s: float = 1.0,
) -> dict[str, Any]:
    """Runs the load against a served demo; returns the report (see the module doc).

    A client that gets a 503 waits `backoff_s` (less than the server's Retry-After) before its next request.
    After the load, each SIG request that was answered 200 is sent alone, and every 200 compared with it.
    """
    examples = json.loads(call(base, "/get_dataset", {"dataset_name": DATASET}, None, request_timeout_s)[1])
    ids = [ex["id"] for ex in examples]
    sigs, quicks = sig_requests(model, ids, steps), quick_requests(model, ids)
    rss_before = rss() if rss else None
    lock, counter = threading.Lock(), iter(range(max_requests))
    statuses: collections.Counter = collections.Counter()
    seconds_by_kind: dict[str, list[float]] = collections.defaultdict(list)
    answers: dict[int, list[Any]] = collections.defaultdict(list)  # SIG 200s by request.
    end = time.monotonic() + duration_s
    rss_seen = [rss_before] if rss else []
    done = threading.Event()

    def watch_memory() -> None:
        while rss and not done.wait(0.5):
            rss_seen.append(rss())

    def client(n: int) -> None:
        k = n
        while time.monotonic() < end:
            with lock:
                if next(counter, None) is None:
                    return
            k += 1
            is_sig = (k * 0.618034) % 1 < sig_share
            index = k % len(sigs)
            request = sigs[index] if is_sig else quicks[k % len(quicks)]
            status, body, seconds = timed(base, request, request_timeout_s)
            kind = f"sig {status}" if is_sig else f"quick {status}"
            if is_sig and status == 503:
                kind += " deadline" if b"past the server's deadline" in body else " refused"
            with lock:
                statuses[f"{'sig' if is_sig else 'quick'} {status}"] += 1
                seconds_by_kind[kind].append(seconds)
                if is_sig and status == 200:
                    answers[index].append(json.loads(body))
            if status == 503:
                time.sleep(backoff_s)

    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    load_s = time.monotonic() - started
    done.set()
    watcher.join()
    rss_after = rss() if rss else None
    alone_s, alone_503, mismatches = {}, 0, []
    for index in sorted(answers) or [0]:  # At least one, to check the server still answers alone.
        for _ in range(ALONE_TRIES):  # A busy machine may run a request alone past the server's deadline (503).
            status, body, seconds = timed(base, sigs[index], 600)
            if status != 503:
                break
            alone_503 += 1
        assert status == 200, body[:500]
        alone_s[index] = round(seconds, 2)
        alone = json.loads(body)
        mismatches += [(index, m) for got in answers.get(index, []) if (m := mismatch(got, alone))]
    everything = [s for values in seconds_by_kind.values() for s in values]
    return {
        "clients": clients,
        "duration_s": duration_s,
        "load_s": round(load_s, 1),
        "steps": steps,
        "request_timeout_s": request_timeout_s,
        "statuses": dict(sorted(statuses.items())),
        "server_errors_other_than_503": sum(
            v for k, v in statuses.items() if k.split()[1][0] == "5" and not k.endswith("503")
        ),
        "no_answer": sum(v for k, v in statuses.items() if k.endswith(" 0")),
        "sig_completed": sum(len(v) for v in answers.values()),
        "sig_completed_by_request": {i: len(v) for i, v in sorted(answers.items())},
        "sig_mismatches": len(mismatches),
        "mismatch_examples": mismatches[:5],
        "relative_tolerance": RELATIVE_TOLERANCE,
        "seconds": {kind: percentiles(values) for kind, values in sorted(seconds_by_kind.items())},
        "slowest_answer_s": round(max(everything), 3) if everything else None,
        "sig_503_deadline": len(seconds_by_kind["sig 503 deadline"]),
        "alone_after_s": alone_s,
        "alone_503_after": alone_503,
        "rss_before_mb": rss_before,
        "rss_max_mb": max(rss_seen) if rss_seen else None,
        "rss_after_mb": rss_after,
    }


def rss_of(pid: int) -> float:
    """Resident memory of process `pid` in MB (Linux)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"No VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--duration_s", type=float, default=60)
    parser.add_argument("--max_requests", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=300, help="SIG's Interpolation steps")
    parser.add_argument("--request_timeout_s", type=float, default=60, help="how long a client waits for an answer")
    parser.add_argument("--max_examples", type=int, default=4, help="distinct SIG requests")
    parser.add_argument("--backoff_s", type=float, default=1.0, help="a client's wait after a 503")
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("demo_args", nargs="*", help="extra flags for the demo, after --")
    args = parser.parse_args()
    port = free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "demos.glue_demo",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max_examples",
        str(args.max_examples),
        *args.demo_args,
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while call(base, "/get_info", None, None, 5)[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit("The demo did not start.")
            time.sleep(0.5)
        report = run_load(
            base,
            "sst2_minilm",
            clients=args.clients,
            duration_s=args.duration_s,
            max_requests=args.max_requests,
            steps=args.steps,
            request_timeout_s=args.request_timeout_s,
            rss=lambda: rss_of(process.pid),
            backoff_s=args.backoff_s,
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(json.dumps(report, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
