"""Clients that arrive one after another while others generate: time to first token, the
gaps between a stream's tokens, and throughput, in process on the default base model,
optionally beside a baseline tree.

    .venv/bin/python bench/arrivals.py [--baseline PATH] [--clients 16] [--every 0.02]
        [--tokens 16] [--rounds 3]

Per source tree (baseline first), a subprocess with PATH/src first on PYTHONPATH loads the
default base model (gemma-3-270m, bf16, from tests' .tunesmith-test-cache), makes the 8
random rank-8 adapters of bench/serving_load.py, and runs --rounds rounds after one
warm-up: --clients threads started --every seconds apart, client i asking
`engine.generate` on adapter i % 8 for --tokens new tokens (temperature 1, topK 64, its own
seed). The engine's observer records each request's first token (from submission) and
every gap between a stream's tokens. Prints a markdown table: medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ADAPTERS = 8


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(clients: int, every: float, tokens: int, rounds: int) -> list[dict]:
    """Runs in the child: one dict per round."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import BASE_MODEL_CACHE
    from serving_load import make_adapters
    from tunesmith.config import Settings
    from tunesmith.domain.resources import Turn
    from tunesmith.serving.engine import Engine
    from tunesmith.serving.sampling import SamplingParams
    from tunesmith.serving.scheduler import EngineObserver
    from tunesmith.training.base_models import Catalog, load_base_model

    class Timings(EngineObserver):
        def __init__(self) -> None:
            self.first: list[float] = []
            self.gaps: list[float] = []

        def first_token(self, base_model: str, seconds: float, prompt_tokens: int) -> None:
            self.first.append(seconds)

        def token_gap(self, base_model: str, seconds: float) -> None:
            self.gaps.append(seconds)

    base = load_base_model(Catalog(Settings()).default, BASE_MODEL_CACHE)
    timings = Timings()
    engine = Engine(lambda _spec: base, adapter_cache_size=ADAPTERS, observer=timings)
    turns = [Turn("user", "Write one sentence about the sea.")]
    with tempfile.TemporaryDirectory() as scratch:
        make_adapters(Path(scratch), ADAPTERS)
        adapters = [Path(scratch) / f"adapter-{i}" for i in range(ADAPTERS)]

        def one_round() -> dict:
            timings.first.clear()
            timings.gaps.clear()
            counts = [0] * clients

            def client(i: int) -> None:
                params = SamplingParams(
                    temperature=1.0, top_p=1.0, top_k=64, max_output_tokens=tokens, seed=i
                )
                answer = engine.generate(base.spec, adapters[i % ADAPTERS], turns, params)
                counts[i] = answer.candidates[0].token_count

            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
                time.sleep(every)
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - start
            return {
                "tokens_per_second": sum(counts) / wall,
                "gap_p50": percentile(timings.gaps, 0.5),
                "gap_p95": percentile(timings.gaps, 0.95),
                "gap_max": max(timings.gaps),
                "first_p50": percentile(timings.first, 0.5),
                "first_p95": percentile(timings.first, 0.95),
            }

        one_round()  # warm-up: adapters loaded, caches built
        return [one_round() for _ in range(rounds)]


def run_tree(tree: Path, args: argparse.Namespace) -> list[dict]:
    command = [
        sys.executable,
        __file__,
        "--child",
        *("--clients", str(args.clients), "--every", str(args.every)),
        *("--tokens", str(args.tokens), "--rounds", str(args.rounds)),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{tree}: exit status {done.returncode}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", type=Path, help="source tree to compare against")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--every", type=float, default=0.02, help="seconds between arrivals")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.clients, args.every, args.tokens, args.rounds)))
        return
    trees = {"current": REPO}
    if args.baseline:
        trees = {"baseline": args.baseline.resolve(), **trees}
    print(
        f"{args.clients} clients arriving {args.every * 1000:.0f} ms apart, {args.tokens} new "
        f"tokens each, on {ADAPTERS} adapters; medians of {args.rounds} rounds.\n"
    )
    print("| tree | tok/s | token gap p50 / p95 / max ms | first token p50 / p95 ms |")
    print("|---|---|---|---|")
    for name, tree in trees.items():
        rounds = run_tree(tree, args)

        def median(key: str, rounds: list[dict] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        print(
            f"| {name} | {median('tokens_per_second'):.0f} | "
            f"{median('gap_p50') * 1000:.0f} / {median('gap_p95') * 1000:.0f} / "
            f"{median('gap_max') * 1000:.0f} | "
            f"{median('first_p50') * 1000:.0f} / {median('first_p95') * 1000:.0f} |"
        )


if __name__ == "__main__":
    main()
