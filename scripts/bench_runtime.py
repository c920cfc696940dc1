"""Cold start and per-request latency of a released bundle, as production sees it.

    python scripts/bench_runtime.py BUNDLE [--texts FILE] [--requests 300] [--python .venv-runtime/bin/python]

Measures, on this machine:
  * cold start: wall time of a fresh `bertpress predict BUNDLE "text"` process (interpreter start,
    imports, bundle checksum, session creation, one prediction), and inside one process the time
    of `Model(bundle)` and of the first prediction;
  * per request in-process: Model.predict([text]) over real sentences, p50/p90/p99;
  * per request over HTTP: POST /predict {"text": ...} to `bertpress serve` on 127.0.0.1, p50/p90/p99.
Prints a Markdown table and writes the numbers as JSON next to it (--json).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXTS = ["a gripping, beautifully shot film", "the plot never recovers from its dull start",
                 "an uneven but often funny comedy with a great cast", "boring"]


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "n": len(ms)}


def cold_start(python: str, bundle: str, runs: int) -> dict[str, float]:
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([python, "-m", "bertpress.cli", "predict", bundle, "a gripping film"], cwd=ROOT,
                       check=True, capture_output=True)
        walls.append((time.perf_counter() - start) * 1000)
    return {"process_wall_ms_median": statistics.median(walls), "runs": runs}


def in_process(bundle: str, texts: list[str], requests: int) -> dict[str, object]:
    from bertpress.runtime import Model

    start = time.perf_counter()
    model = Model(bundle)
    load_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    model.predict([texts[0]])
    first_ms = (time.perf_counter() - start) * 1000
    times = []
    for i in range(requests):
        start = time.perf_counter()
        model.predict([texts[i % len(texts)]])
        times.append((time.perf_counter() - start) * 1000)
    return {"load_ms": load_ms, "first_predict_ms": first_ms, "predict": percentiles(times)}


def http(python: str, bundle: str, texts: list[str], requests: int) -> dict[str, object]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([python, "-m", "bertpress.cli", "serve", bundle, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.perf_counter() - start > 60:
                raise RuntimeError("server did not start") from None
            time.sleep(0.05)
    ready_ms = (time.perf_counter() - start) * 1000
    times = []
    try:
        for i in range(requests + 10):
            body = json.dumps({"text": texts[i % len(texts)]}).encode()
            request = urllib.request.Request(f"{base}/predict", data=body,
                                             headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
            if i >= 10:  # warm-up requests not counted
                times.append((time.perf_counter() - start) * 1000)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"server_ready_ms": ready_ms, "predict": percentiles(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--texts", type=Path, help="One text per line (default: a few built-in sentences).")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--python", default=sys.executable, help="Interpreter of the install to measure.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    texts = ([t for t in args.texts.read_text().splitlines() if t.strip()] if args.texts else DEFAULT_TEXTS)
    result = {
        "cold_start": cold_start(args.python, args.bundle, args.cold_runs),
        "in_process": in_process(args.bundle, texts, args.requests),
        "http": http(args.python, args.bundle, texts, args.requests),
    }
    ip, ht = result["in_process"], result["http"]
    print(f"| measure | value |\n|---|---|\n"
          f"| cold start: fresh `bertpress predict` process, wall (median of {args.cold_runs}) | "
          f"{result['cold_start']['process_wall_ms_median']:.0f} ms |\n"
          f"| Model(bundle): checksum + tokenizer + session | {ip['load_ms']:.0f} ms |\n"
          f"| first prediction after load | {ip['first_predict_ms']:.2f} ms |\n"
          f"| in-process predict, batch 1 (p50 / p90 / p99) | {ip['predict']['p50_ms']:.2f} / "
          f"{ip['predict']['p90_ms']:.2f} / {ip['predict']['p99_ms']:.2f} ms |\n"
          f"| `bertpress serve` ready after start | {ht['server_ready_ms']:.0f} ms |\n"
          f"| HTTP POST /predict, one text (p50 / p90 / p99) | {ht['predict']['p50_ms']:.2f} / "
          f"{ht['predict']['p90_ms']:.2f} / {ht['predict']['p99_ms']:.2f} ms |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
