"""Generation throughput and latency through a real server: one client alone, then many
clients at once spread over several tuned models, optionally beside a baseline tree.

    .venv/bin/python bench/serving_load.py [--repo PATH] [--baseline PATH]
        [--clients 16] [--models 8] [--tokens 16] [--alone 3] [--each 1] [--torch-threads 0]

Per source tree (baseline first): starts `python -m tunesmith serve` from PATH/src (first on
PYTHONPATH) on a fresh data dir, with no training workers and no quotas, on the default
base model (gemma-3-270m, converted once into tests' .tunesmith-test-cache). Imports
--models random rank-8 LoRA adapters on q/k/v/o (made here with peft, seeded, their B
matrices scaled down so the text stays plausible) through tunedModels:importAdapter, and
sends one warm-up request to each model. Then:

  alone:      one client, --alone sequential generateContent requests on one tuned model;
  concurrent: --clients threads at once, client i on tuned model i % --models, --each
              requests each, while one more client times GET tunedModels (list) in a loop.

Every request asks for --tokens new tokens (temperature 1, topK 64, its own seed); tokens
are counted from usageMetadata.candidatesTokenCount, never assumed. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import BASE_MODEL_CACHE, LiveServer  # noqa: E402

BASE = "models/gemma-3-270m"
PROMPT = "Write one sentence about the sea."


@dataclass
class Phase:
    tokens: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.tokens / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_adapters(folder: Path, count: int) -> list[Path]:
    """`count` seeded random LoRA adapters on the base model, as tar archives."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.training.base_models import BUILTIN_MODELS, ensure_cached

    spec = next(s for s in BUILTIN_MODELS if s.name == BASE)
    base = ensure_cached(spec, BASE_MODEL_CACHE)
    archives = []
    for i in range(count):
        model = AutoModelForCausalLM.from_pretrained(base)
        torch.manual_seed(i)
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        peft = get_peft_model(model, config)
        with torch.no_grad():
            for name, weight in peft.named_parameters():
                if "lora_B" in name:
                    weight.mul_(0.02)
        out = folder / f"adapter-{i}"
        peft.save_pretrained(out)
        archive = folder / f"adapter-{i}.tar"
        with tarfile.open(archive, "w") as tar:
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                tar.add(out / name, arcname=name)
        archives.append(archive)
    return archives


def start_server(tree: Path, scratch: Path, torch_threads: int) -> LiveServer:
    env = {
        # `serve` leaves torch's threads alone (TUNESMITH_TORCH_THREADS is the workers'):
        # torch reads OMP_NUM_THREADS, for either tree.
        **({"OMP_NUM_THREADS": str(torch_threads)} if torch_threads else {}),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(tree / "src"), os.environ.get("PYTHONPATH", "")) if p
        ),
        "TUNESMITH_WORKERS": "0",
        "TUNESMITH_QUOTA_TUNED_MODELS_PER_PROJECT": "0",
    }
    data = Path(tempfile.mkdtemp(prefix="data-", dir=scratch)) / "data"
    return LiveServer(data, env).start(300)


def import_models(client: httpx.Client, archives: list[Path]) -> list[str]:
    names = []
    for i, archive in enumerate(archives):
        response = client.post(
            "/v1beta/tunedModels:importAdapter",
            params={"tunedModelId": f"bench-{i}", "baseModel": BASE},
            content=archive.read_bytes(),
            headers={"Content-Type": "application/x-tar"},
        )
        response.raise_for_status()
        names.append(response.json()["name"])
    return names


def generate(client: httpx.Client, model: str, tokens: int, seed: int) -> tuple[int, float]:
    body = {
        "contents": [{"parts": [{"text": PROMPT}]}],
        "generationConfig": {
            "maxOutputTokens": tokens,
            "temperature": 1.0,
            "topK": 64,
            "seed": seed,
        },
    }
    started = time.perf_counter()
    response = client.post(f"/v1beta/{model}:generateContent", json=body)
    took = time.perf_counter() - started
    response.raise_for_status()
    return response.json()["usageMetadata"]["candidatesTokenCount"], took


def alone(server: LiveServer, model: str, args: argparse.Namespace) -> Phase:
    latencies, tokens = [], 0
    started = time.perf_counter()
    with server.client() as client:
        for n in range(args.alone):
            count, took = generate(client, model, args.tokens, 1000 + n)
            tokens += count
            latencies.append(took)
    return Phase(tokens, time.perf_counter() - started, latencies)


def concurrent(server: LiveServer, models: list[str], args: argparse.Namespace):
    """The concurrent phase, and the GET list latencies measured while it ran."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    go = threading.Barrier(args.clients + 1)

    def client_loop(i: int) -> None:
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=1800) as c:
            go.wait()
            for n in range(args.each):
                done = generate(c, models[i % len(models)], args.tokens, i * 100 + n)
                with lock:
                    results.append(done)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    lists: list[float] = []
    with server.client() as lister:
        go.wait()
        started = time.perf_counter()
        while any(t.is_alive() for t in threads):
            t0 = time.perf_counter()
            lister.get("/v1beta/tunedModels").raise_for_status()
            lists.append(time.perf_counter() - t0)
            time.sleep(0.05)
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    phase = Phase(sum(t for t, _ in results), seconds, [took for _, took in results])
    return phase, Phase(len(lists), seconds, lists)


def measure(tree: Path, archives: list[Path], scratch: Path, args) -> dict:
    server = start_server(tree, scratch, args.torch_threads)
    try:
        with server.client() as client:
            client.timeout = httpx.Timeout(1800)
            models = import_models(client, archives)
            for model in models:  # loads the base model and every adapter once
                generate(client, model, 2, 0)
        single = alone(server, models[0], args)
        many, lists = concurrent(server, models, args)
    finally:
        server.stop()
    return {"alone": single, "concurrent": many, "lists": lists}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def commit(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="source tree to measure")
    parser.add_argument("--baseline", type=Path, help="source tree to compare against")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--alone", type=int, default=3, help="sequential requests alone")
    parser.add_argument("--each", type=int, default=1, help="requests per concurrent client")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="servers' OMP_NUM_THREADS (0: torch's default)"
    )
    args = parser.parse_args()

    trees = {"current": args.repo.resolve()}
    if args.baseline:
        trees = {"baseline": args.baseline.resolve(), **trees}
    results = {}
    with tempfile.TemporaryDirectory(prefix="tunesmith-serving-load-") as tmp:
        scratch = Path(tmp)
        archives = make_adapters(scratch, args.models)
        for label, tree in trees.items():
            before = load_average()
            results[label] = measure(tree, archives, scratch, args)
            print(
                f"{label} ({tree} at {commit(tree)}): load average {before} before, "
                f"{load_average()} after",
                file=sys.stderr,
            )
            print(json.dumps({k: vars(v) for k, v in results[label].items()}), file=sys.stderr)

    print(
        f"\n{args.clients} clients over {args.models} tuned models, {args.tokens} new tokens "
        f"per request ({args.each} each); alone: {args.alone} sequential requests; "
        f"OMP_NUM_THREADS={args.torch_threads or 'unset'}.\n"
    )
    print("| tree | alone tok/s | alone median s | concurrent tok/s | x alone "
          "| concurrent p50 / p95 s | GET list p50 / p95 ms while generating |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for label, r in results.items():
        one, many, lists = r["alone"], r["concurrent"], r["lists"]
        print(
            f"| {label} | {one.per_second:.1f} | {statistics.median(one.latencies):.2f} "
            f"| {many.per_second:.1f} | {many.per_second / one.per_second:.1f}x "
            f"| {many.percentile(0.5):.2f} / {many.percentile(0.95):.2f} "
            f"| {lists.percentile(0.5) * 1000:.0f} / {lists.percentile(0.95) * 1000:.0f} |"
        )


if __name__ == "__main__":
    main()
