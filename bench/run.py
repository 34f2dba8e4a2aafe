"""Benchmarks on the real default base model (Gemma 3 270M), each beside its baseline.

    .venv/bin/python bench/run.py [--base-model-dir DIR] [--quick]

(a) the Gemini tuning tutorial's job through a real `tunesmith serve` on loopback: wall time
    from POST /v1beta/tunedModels to the tuned model being ACTIVE;
(b) training throughput: Tunesmith's train_lora against a plain transformers Trainer + peft on
    the same model, data, prompt encoding, LoRA config and hyperparameters, side by side, on
    the tutorial's job and on a larger one (the first 4 steps of 1,000 examples of about 64
    tokens, batch 16), with achieved model FLOP/s (bench/flops.py) against this machine's
    bf16 matmul peak measured in the same run;
(c) generateContent latency (Engine.generate, greedy, 8 tokens) on the base model and on a
    tuned adapter, and GET /v1beta/tunedModels latency while a job trains vs idle.

--quick skips the server measurements ((a) and the API latency). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config import Settings
from tunesmith.domain.resources import Hyperparameters, TuningExample, Turn
from tunesmith.training import lora
from tunesmith.training.base_models import Catalog, LoadedBaseModel, load_base_model
from tunesmith.training.forward import warm_up
from tunesmith.training.recipe import DEFAULT_RECIPE

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
sys.path.insert(0, str(REPO / "tests"))
from conftest import TUTORIAL_EXAMPLES as TUTORIAL  # noqa: E402
from flops import matmul_peak, step_flops  # noqa: E402

HP = Hyperparameters(epoch_count=5, batch_size=4, learning_rate=0.001)
LARGE_HP = Hyperparameters(epoch_count=1, batch_size=16, learning_rate=0.0002)
LARGE_STEPS = 4  # of the 63 a 1,000-example epoch has: the per-step cost is the point
WORDS = [
    "apple",
    "river",
    "stone",
    "light",
    "green",
    "house",
    "music",
    "paper",
    "table",
    "window",
    "garden",
    "silver",
    "cloud",
    "winter",
    "summer",
    "bread",
    "coffee",
    "yellow",
    "market",
    "train",
    "forest",
    "ocean",
    "mountain",
    "letter",
    "orange",
    "school",
    "doctor",
    "family",
    "friend",
    "city",
    "road",
    "bridge",
    "island",
    "castle",
    "flower",
    "dream",
    "story",
]


def large_examples(count: int = 1000) -> list[TuningExample]:
    """Inputs of 46 common words and answers of 14 (their first 14 reversed): about 64
    tokens an example with Gemma's tokenizer, framing and end token included."""
    rng = random.Random(0)
    examples = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(46)]
        examples.append(TuningExample(" ".join(words), " ".join(reversed(words[:14]))))
    return examples


@dataclass(frozen=True)
class Job:
    name: str
    examples: list[TuningExample]
    hp: Hyperparameters

    def flops(self, base: LoadedBaseModel) -> int:
        """Model FLOPs of every step of the job, as train_lora batches it."""
        encoded = [base.codec.encode_example(e.text_input, e.output) for e in self.examples]
        stream = lora.epoch_stream(len(encoded), self.hp.epoch_count, 0)
        batches = lora.step_batches(encoded, stream, self.hp.batch_size)
        config = base.model.config
        rank, targets = DEFAULT_RECIPE.rank, DEFAULT_RECIPE.targets
        return sum(step_flops(config, b, rank, targets) for b in batches)


TUTORIAL_JOB = Job("tutorial job", [TuningExample(i, o) for i, o in TUTORIAL], HP)
LARGE_JOB = Job(
    f"1,000 x 64-token examples, batch 16, first {LARGE_STEPS} steps",
    large_examples()[: LARGE_STEPS * LARGE_HP.batch_size],
    LARGE_HP,
)


def load(cache: Path) -> LoadedBaseModel:
    """A fresh bf16 copy of the default base model, with one untimed forward pass."""
    base = load_base_model(Catalog(Settings()).default, cache)
    base.model.eval()
    with torch.no_grad():
        prompt, answer = base.codec.encode_example(*TUTORIAL[0])
        base.model(input_ids=torch.tensor([prompt + answer]))
    return base


def tunesmith_training(base: LoadedBaseModel, workdir: Path, job: Job) -> dict:
    tokens = 0
    losses: list[float] = []

    def count(step: lora.StepResult) -> None:
        nonlocal tokens
        tokens += step.tokens
        losses.append(step.mean_loss)

    start, cpu = time.perf_counter(), time.process_time()
    lora.train_lora(
        base, job.examples, job.hp, 0, workdir / "adapter", lora.Checkpoint(workdir / "ck.pt"),
        on_step=count, checkpoint_interval=1e9,
    )  # fmt: skip
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"{job.name}: Tunesmith {seconds:.2f} s", file=sys.stderr)
    return {
        "seconds": seconds,
        "cpu": cpu,
        "tokens": tokens,
        "steps": len(losses),
        "last": losses[-1],
    }


def trainer_baseline(base: LoadedBaseModel, workdir: Path, job: Job) -> dict:
    """transformers Trainer + peft: the model's own loss, full-vocabulary logits everywhere."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    rows = []
    for example in job.examples:
        prompt, answer = base.codec.encode_example(example.text_input, example.output)
        rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    pad = base.tokenizer.pad_token_id or 0
    seen = {"tokens": 0, "steps": 0}

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch])
        labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch])
        mask = torch.tensor(
            [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch]
        )
        seen["tokens"] += int(mask.sum())
        seen["steps"] += 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    config = LoraConfig(
        r=DEFAULT_RECIPE.rank, lora_alpha=DEFAULT_RECIPE.alpha,
        target_modules=list(DEFAULT_RECIPE.targets), lora_dropout=DEFAULT_RECIPE.dropout,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    model = get_peft_model(base.model, config)
    args = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=job.hp.batch_size,
        num_train_epochs=job.hp.epoch_count, learning_rate=job.hp.learning_rate, weight_decay=0.0,
        optim="adamw_torch", lr_scheduler_type="constant", warmup_steps=0,
        logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    start, cpu = time.perf_counter(), time.process_time()
    result = trainer.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    model.unload().eval()
    print(f"{job.name}: Trainer + peft {seconds:.2f} s", file=sys.stderr)
    return {**seen, "seconds": seconds, "cpu": cpu, "last": result.training_loss}


def generation_latency(base: LoadedBaseModel, adapter: Path | None) -> float:
    from tunesmith.serving.engine import Engine, SamplingParams

    engine = Engine(lambda _spec: base, adapter_cache_size=2)
    params = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_output_tokens=8)
    turns = [Turn("user", "twenty two")]
    engine.generate(base.spec, adapter, turns, params)  # warm-up
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        engine.generate(base.spec, adapter, turns, params)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def job_body() -> dict:
    return {
        "display_name": "number generator",
        "base_model": "models/gemini-1.0-pro-001",
        "tuning_task": {
            "hyperparameters": {"batch_size": 4, "learning_rate": 0.001, "epoch_count": 5},
            "training_data": {
                "examples": {"examples": [{"text_input": i, "output": o} for i, o in TUTORIAL]}
            },
        },
    }


def timed_gets(client, count: int, pause: float = 0.05) -> list[float]:
    runs = []
    for _ in range(count):
        start = time.perf_counter()
        assert client.get("/v1beta/tunedModels").is_success
        runs.append(time.perf_counter() - start)
        time.sleep(pause)
    return runs


def server_measurements(cache: Path, workdir: Path) -> dict:
    """(a) and the API latency, through `tunesmith serve` as tests/conftest.py starts it."""
    from conftest import LiveServer

    env = {"TUNESMITH_BASE_MODEL_DIR": str(cache.resolve())}
    server = LiveServer(workdir / "data", env)
    (workdir / "data").mkdir(parents=True)
    start = time.perf_counter()
    server.start(timeout=600)
    out: dict = {"startup": time.perf_counter() - start}
    try:
        with server.client() as client:
            timed_gets(client, 1)
            out["idle"] = statistics.median(timed_gets(client, 20))
            for run in ("first", "second"):  # the first job loads the base model in the worker
                start = time.perf_counter()
                operation = client.post("/v1beta/tunedModels", json=job_body()).json()
                while not (done := client.get(f"/v1/{operation['name']}").json()).get("done"):
                    time.sleep(0.05)
                out[run] = time.perf_counter() - start
                assert "error" not in done, done
                assert done["response"]["state"] == "ACTIVE", done["response"]
            # Third job: GET /v1beta/tunedModels while the worker is training it.
            operation = client.post("/v1beta/tunedModels", json=job_body()).json()
            name = operation["name"]
            while not client.get(f"/v1/{name}").json()["metadata"].get("completedSteps"):
                time.sleep(0.05)
            out["busy"] = statistics.median(timed_gets(client, 20))
            out["busy_valid"] = not client.get(f"/v1/{name}").json().get("done")
    finally:
        server.stop()
    return out


def training_rows(job: Job, flops: int, ours: dict, theirs: dict, peak: float) -> list[str]:
    def rate(r: dict) -> str:
        achieved = flops / r["seconds"] / 1e9
        return f"{achieved:.0f} ({100 * achieved / peak:.0f}%)"

    return [
        f"| (b) {job.name}: training wall time (s) | {ours['seconds']:.2f} | "
        f"{theirs['seconds']:.2f} ({theirs['seconds'] / ours['seconds']:.1f}x) | "
        "transformers Trainer + peft, same data/LoRA/hp |",
        f"| (b) {job.name}: process CPU time (s) | {ours['cpu']:.2f} | {theirs['cpu']:.2f} | "
        "same |",
        f"| (b) {job.name}: model GFLOP/s (% of peak) | {rate(ours)} | {rate(theirs)} | "
        f"same {flops / 1e9:.1f} GFLOP |",
        f"| (b) {job.name}: trained tokens/s (non-padding) | "
        f"{ours['tokens'] / ours['seconds']:.0f} | {theirs['tokens'] / theirs['seconds']:.0f} | same |",
        f"| (b) {job.name}: optimizer steps / trained tokens | {ours['steps']} / "
        f"{ours['tokens']} | {theirs['steps']} / {theirs['tokens']} | same |",
        f"| (b) {job.name}: final loss (last step / Trainer mean) | {ours['last']:.3f} | "
        f"{theirs['last']:.3f} | same |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model-dir", type=Path, default=REPO / ".tunesmith-test-cache")
    parser.add_argument("--quick", action="store_true", help="skip the server measurements")
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help="torch threads (1 suffers least from other load)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    peak = matmul_peak()
    jobs = (TUTORIAL_JOB, LARGE_JOB)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = load(args.base_model_dir)
        warm_up(base.model)  # as a worker does when it starts, before its first job
        flops = [job.flops(base) for job in jobs]
        ours = [tunesmith_training(base, work / f"ours{i}", job) for i, job in enumerate(jobs)]
        del base
        gc.collect()
        base = load(args.base_model_dir)  # clean base weights for the baseline
        theirs = [trainer_baseline(base, work / f"hf{i}", job) for i, job in enumerate(jobs)]
        del base
        gc.collect()
        base = load(args.base_model_dir)
        gen_base = generation_latency(base, None)
        gen_tuned = generation_latency(base, work / "ours0" / "adapter")
        del base
        gc.collect()
        served = None if args.quick else server_measurements(args.base_model_dir, work / "srv")
    rows = [
        f"bf16 matmul peak, {args.threads} threads: {peak['peak']:.0f} GFLOP/s (square 2048/4096: "
        f"{peak['square']:.0f}; 1,024-row model shapes: {peak['model_shapes']:.0f}). "
        f"Load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after.",
        "",
        "| Measurement | Tunesmith | Baseline | Baseline is |",
        "|---|---|---|---|",
    ]
    for job, job_flops, mine, hf in zip(jobs, flops, ours, theirs, strict=True):
        rows += training_rows(job, job_flops, mine, hf, peak["peak"])
    rows += [
        f"| (c) generate, base model, 8 tokens greedy (median of 5, s) | {gen_base:.3f} | "
        f"{gen_tuned:.3f} | same call on the tuned adapter |",
    ]
    if served:
        rows += [
            f"| (a) tutorial job POST to ACTIVE, first job (s) | {served['first']:.1f} | "
            f"{served['second']:.1f} | a second identical job, base model already loaded |",
            f"| (a) server start until it answers (s) | {served['startup']:.1f} | | |",
            f"| (c) GET /v1beta/tunedModels while training (median of 20, ms) | "
            f"{served['busy'] * 1000:.1f}{'' if served['busy_valid'] else ' (job ended early)'} | "
            f"{served['idle'] * 1000:.1f} | the same call with the worker idle |",
        ]
    print("\n".join(rows))


if __name__ == "__main__":
    main()
