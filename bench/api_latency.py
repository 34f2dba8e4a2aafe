"""Per-request latency of cheap API reads, optionally beside a baseline source tree.

    .venv/bin/python bench/api_latency.py [--repo PATH] [--baseline PATH] [--rounds 2]

Starts `python -m tunesmith serve` from PATH/src (first on PYTHONPATH) on a fresh data
dir with no training workers, no request quota and a tiny random base model, creates
--models tuned models (they stay queued), then times sequential requests over one keep-alive
httpx connection with the owner's API key:

    GET /v1beta/tunedModels/{id}          (--item times, cycling over the models)
    GET /v1beta/tunedModels?pageSize=50   (--list times)
    GET /v1beta/models                    (--catalog times)

Each round starts a new server; with --baseline the trees alternate, baseline first. Per tree
and endpoint the round with the lowest median is reported. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import TINY, LiveServer, tiny_env  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402

EXAMPLES = [("1", "2"), ("3", "4"), ("8", "9"), ("one", "two")]
WARMUP = 20


@dataclass
class Timing:
    median_ms: float
    p95_ms: float
    per_second: float


def start_server(tree: Path, tiny: Path, scratch: Path) -> LiveServer:
    """`tunesmith serve` from one source tree (first on PYTHONPATH), on its own data dir,
    with no workers and no quotas."""
    env = {
        **tiny_env(tiny),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(tree / "src"), os.environ.get("PYTHONPATH", "")) if p
        ),
        "TUNESMITH_WORKERS": "0",
        "TUNESMITH_QUOTA_TUNED_MODELS_PER_PROJECT": "0",
    }
    return LiveServer(Path(tempfile.mkdtemp(prefix="data-", dir=scratch)) / "data", env).start(120)


def create_models(client: httpx.Client, count: int) -> list[str]:
    body = {
        "display_name": "bench",
        "base_model": TINY,
        "tuning_task": {
            "hyperparameters": {"batch_size": 2, "learning_rate": 0.001, "epoch_count": 1},
            "training_data": {
                "examples": {"examples": [{"text_input": i, "output": o} for i, o in EXAMPLES]}
            },
        },
    }
    for _ in range(count):
        client.post("/v1beta/tunedModels", json=body).raise_for_status()
    listed = client.get("/v1beta/tunedModels", params={"pageSize": count}).json()
    names = [m["name"] for m in listed.get("tunedModels", [])]
    if len(names) != count:
        raise RuntimeError(f"created {count} tuned models, listed {len(names)}")
    return names


def time_requests(client: httpx.Client, paths: list[str], times: int) -> Timing:
    for i in range(WARMUP):
        client.get(paths[i % len(paths)]).raise_for_status()
    samples = []
    start = time.perf_counter()
    for i in range(times):
        t0 = time.perf_counter()
        response = client.get(paths[i % len(paths)])
        samples.append(time.perf_counter() - t0)
        response.raise_for_status()
    elapsed = time.perf_counter() - start
    samples.sort()
    return Timing(
        median_ms=statistics.median(samples) * 1000,
        p95_ms=samples[min(len(samples) - 1, int(0.95 * len(samples)))] * 1000,
        per_second=times / elapsed,
    )


def measure(tree: Path, tiny: Path, scratch: Path, args: argparse.Namespace) -> dict:
    server = start_server(tree, tiny, scratch)
    try:
        with server.client() as client:
            names = create_models(client, args.models)
            # Tells the trees apart: the baseline has no permissions route (404).
            permissions = client.get(f"/v1beta/{names[0]}/permissions").status_code
            results = {
                "permissions_route": permissions,
                f"GET tunedModels/{{id}} (x{args.item})": time_requests(
                    client, [f"/v1beta/{n}" for n in names], args.item
                ),
                f"GET tunedModels?pageSize=50 (x{args.list})": time_requests(
                    client, ["/v1beta/tunedModels?pageSize=50"], args.list
                ),
                f"GET models (x{args.catalog})": time_requests(
                    client, ["/v1beta/models"], args.catalog
                ),
            }
    finally:
        server.stop()
    return results


def best(rounds: list[dict]) -> dict[str, Timing]:
    endpoints = [k for k in rounds[0] if k != "permissions_route"]
    return {e: min((r[e] for r in rounds), key=lambda t: t.median_ms) for e in endpoints}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="source tree to measure")
    parser.add_argument("--baseline", type=Path, help="source tree to compare against")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--item", type=int, default=500)
    parser.add_argument("--list", type=int, default=200)
    parser.add_argument("--catalog", type=int, default=500)
    args = parser.parse_args()

    trees = {"current": args.repo.resolve()}
    if args.baseline:
        trees = {"baseline": args.baseline.resolve(), **trees}
    with tempfile.TemporaryDirectory(prefix="tunesmith-api-latency-") as tmp:
        scratch = Path(tmp)
        tiny = build_tiny_model(scratch / "tiny")
        rounds: dict[str, list[dict]] = {label: [] for label in trees}
        for n in range(args.rounds):
            for label, tree in trees.items():
                result = measure(tree, tiny, scratch, args)
                rounds[label].append(result)
                summary = ", ".join(
                    f"{k}: {v.median_ms:.2f} ms" for k, v in result.items() if isinstance(v, Timing)
                )
                print(
                    f"round {n + 1} {label} ({tree}; GET .../permissions -> "
                    f"{result['permissions_route']}): {summary}",
                    file=sys.stderr,
                )

    results = {label: best(r) for label, r in rounds.items()}
    print(f"\nBest of {args.rounds} rounds per tree; {args.models} tuned models.\n")
    if args.baseline:
        print("| request | baseline median / p95 ms | current median / p95 ms | baseline req/s "
              "| current req/s | median ratio |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for endpoint, now in results["current"].items():
            then = results["baseline"][endpoint]
            print(
                f"| {endpoint} | {then.median_ms:.2f} / {then.p95_ms:.2f} "
                f"| {now.median_ms:.2f} / {now.p95_ms:.2f} | {then.per_second:.0f} "
                f"| {now.per_second:.0f} | {now.median_ms / then.median_ms:.2f}x |"
            )
    else:
        print("| request | median ms | p95 ms | req/s |")
        print("|---|---|---|---|")
        for endpoint, now in results["current"].items():
            print(f"| {endpoint} | {now.median_ms:.2f} | {now.p95_ms:.2f} | {now.per_second:.0f} |")


if __name__ == "__main__":
    main()
