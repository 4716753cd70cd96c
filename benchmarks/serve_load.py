"""Load test of `bearrec serve`: throughput and latency at several concurrencies, batched vs not,
and 1,000 malformed requests fired in the middle of the load.

Starts `python -m bearrec serve` on loopback (a subprocess, port 0) with `--model` (default the
packaged SmolLM2-135M on MovieLens-100k), sends `--requests` POST /v1/recommend requests (test
users' histories, cycled) at each `--concurrency` with httpx.AsyncClient, and prints requests/s and
p50/p95/p99 latency. Then, on the same server, a concurrency-32 load runs while `--malformed`
malformed requests (unknown ids and titles, empty or too long histories, k out of range, wrong
types, invalid JSON, oversized bodies, unknown keys, bad batch entries, wrong content type) are
fired: it prints how many got a 4xx and a 5xx (must be 0), whether every good request still got 200,
and the server's RSS before and after. The same clean load then runs against a second server
started with `--max-batch-size 1`; the last line is
`RESULT serve_batching_speedup <requests/s batched / unbatched at concurrency 32>`.

    python benchmarks/serve_load.py [--model smollm2-135m] [--data movielens-100k] [--requests 96]
    python benchmarks/serve_load.py --model /tmp/tiny/run --requests 40 --malformed 200   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def histories_of(model: str, data: str | None, limit: int) -> list[list[int]]:
    """Test users' histories of the dataset the server will use (its run's config, or --data)."""
    from bearrec.config import load_config
    from bearrec.data import load_dataset

    config = Path(model) / "config.yaml"
    cfg = load_config(config if config.exists() else None, [f"data.name={data}"] if data else [])
    dataset = load_dataset(cfg.data)
    rows = dataset.test or dataset.valid or dataset.train
    return [list(e.history[-limit:]) for e in rows[:500]]


def rss_mb(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`python -m bearrec serve ... --port 0` in a subprocess; `url` once it listens."""

    def __init__(self, args, max_batch_size: int):
        argv = [sys.executable, "-m", "bearrec", "serve", "--model", args.model, "--port", "0",
                "--max-batch-size", str(max_batch_size), "--max-batch-delay-ms", str(args.max_batch_delay_ms),
                "--max-queue", str(args.max_queue), *(["--data", args.data] if args.data else []),
                *shlex.split(args.serve_args)]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = open(Path(args.log_dir) / f"serve-b{max_batch_size}.log", "w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = ""
        while "listening on" not in line:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}); see {self.log.name}")
        self.url = re.search(r"http://\S+", line).group(0)
        deadline = time.monotonic() + args.ready_timeout
        while httpx.get(self.url + "/ready").status_code != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not become ready; see {self.log.name}")
            time.sleep(0.2)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(120)
        self.proc.stdout.close()
        self.log.close()
        return code


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] if ordered else float("nan")


async def load(url: str, histories: list[list[int]], n: int, concurrency: int, k: int) -> dict:
    """`n` good requests from `concurrency` workers; latencies in seconds, statuses counted."""
    latencies, statuses, counter = [], {}, iter(range(n))

    async def worker(client):
        for i in counter:
            start = time.perf_counter()
            r = await client.post("/v1/recommend", json={"history": histories[i % len(histories)], "k": k})
            latencies.append(time.perf_counter() - start)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"rps": n / wall, "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99), "statuses": statuses}


def malformed_requests(n: int, k_max: int) -> list[tuple[str, dict]]:
    """`n` bad requests cycling through the error classes: (path, httpx request kwargs)."""
    big = json.dumps({"history": [1], "pad": "x" * 100_000})
    classes = [
        ("/v1/recommend", {"json": {"history": [10**9]}}),
        ("/v1/recommend", {"json": {"history": ["no such title, surely"]}}),
        ("/v1/recommend", {"json": {"history": []}}),
        ("/v1/recommend", {"json": {"history": [1], "k": 0}}),
        ("/v1/recommend", {"json": {"history": [1], "k": k_max + 1}}),
        ("/v1/recommend", {"json": {"history": [1], "k": "3"}}),
        ("/v1/recommend", {"json": {"history": [1.5, None]}}),
        ("/v1/recommend", {"json": {"history": "1,2,3"}}),
        ("/v1/recommend", {"json": {"history": [1], "bogus": True}}),
        ("/v1/recommend", {"json": {"history": [1] * 5000}}),
        ("/v1/recommend", {"content": b'{"history": [1, 2', "headers": {"content-type": "application/json"}}),
        ("/v1/recommend", {"content": big.encode(), "headers": {"content-type": "application/json"}}),
        ("/v1/recommend", {"content": b'{"history": [1]}', "headers": {"content-type": "text/plain"}}),
        ("/v1/recommend", {"json": [1, 2, 3]}),
        ("/v1/recommend/batch", {"json": {"users": [{"history": [1]}, {"history": [10**9]}]}}),
        ("/v1/recommend/batch", {"json": {"users": []}}),
        ("/v1/nope", {"json": {"history": [1]}}),
    ]
    return [classes[i % len(classes)] for i in range(n)]


async def malformed(url: str, n: int, k_max: int, concurrency: int = 16) -> dict:
    counts = {"4xx": 0, "5xx": 0, "other": 0}
    todo = iter(malformed_requests(n, k_max))

    async def worker(client):
        for path, kwargs in todo:
            try:
                status = (await client.post(path, **kwargs)).status_code
            except httpx.TransportError:  # e.g. the server closing a refused oversized upload early
                counts["other"] += 1
                continue
            key = "4xx" if 400 <= status < 500 else "5xx" if status >= 500 else "other"
            counts[key] += 1

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return counts


def row(label: str, r: dict) -> str:
    bad = {s: c for s, c in r["statuses"].items() if s != 200}
    return (f"{label:<28} {r['rps']:8.2f} req/s  p50 {r['p50'] * 1000:8.1f} ms  p95 {r['p95'] * 1000:8.1f} ms  "
            f"p99 {r['p99'] * 1000:8.1f} ms" + (f"  non-200: {bad}" if bad else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="a run directory, model folder or smollm2-135m")
    p.add_argument("--data", help="dataset (default: the run's; movielens-100k for a bare model)")
    p.add_argument("--requests", type=int, default=96, help="good requests per concurrency level")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (32 is the RESULT's)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--history-length", type=int, default=10, help="last N items of each test history")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-batch-delay-ms", type=float, default=10.0)
    p.add_argument("--max-queue", type=int, default=1024)
    p.add_argument("--malformed", type=int, default=1000)
    p.add_argument("--serve-args", default="", help="extra `bearrec serve` flags, e.g. '--num-beams 5'")
    p.add_argument("--ready-timeout", type=float, default=900, help="seconds to wait for the model to load")
    p.add_argument("--log-dir", default="/tmp", help="where the servers' stderr goes")
    args = p.parse_args()
    if args.data is None and not (Path(args.model) / "config.yaml").exists():
        args.data = "movielens-100k"
    levels = [int(c) for c in args.concurrency.split(",")]
    histories = histories_of(args.model, args.data, args.history_length)
    print(f"model {args.model}, data {args.data or 'from the run'}, {args.requests} requests per level, "
          f"k {args.k}, {len(histories)} distinct histories")
    results = {}
    for batch in (args.max_batch_size, 1):
        server = Server(args, batch)
        info = httpx.get(server.url + "/info").json()
        k = min(args.k, info["k"]["max"])
        print(f"-- server --max-batch-size {batch} --max-batch-delay-ms {args.max_batch_delay_ms} "
              f"(num_beams {info['decode']['num_beams']}, {info['catalogue']['items']} items)")
        asyncio.run(load(server.url, histories, min(8, args.requests), min(levels), k))  # warm-up
        for c in levels:
            results[batch, c] = r = asyncio.run(load(server.url, histories, args.requests, c, k))
            print(row(f"concurrency {c}", r), flush=True)
        if batch != 1 and args.malformed:
            before = rss_mb(server.proc.pid)

            async def mixed():
                return await asyncio.gather(load(server.url, histories, args.requests, max(levels), k),
                                            malformed(server.url, args.malformed, info["k"]["max"]))

            good, bad = asyncio.run(mixed())
            after = rss_mb(server.proc.pid)
            print(row(f"concurrency {max(levels)} + malformed", good))
            print(f"malformed requests: {args.malformed}, 4xx {bad['4xx']}, 5xx {bad['5xx']}, "
                  f"other {bad['other']}; good requests all 200: {set(good['statuses']) == {200}}")
            print(f"server RSS before {before:.1f} MiB, after {after:.1f} MiB")
        print(f"server exit code {server.stop()}")
    top = max(levels)
    print(f"RESULT serve_batching_speedup {results[args.max_batch_size, top]['rps'] / results[1, top]['rps']:.2f}")


if __name__ == "__main__":
    main()
