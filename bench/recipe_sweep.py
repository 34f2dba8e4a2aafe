"""LoRA recipe sweep for Tunesmith's default base model (Gemma 3 270M, pretrained).

Trains with the project's own loop (tunesmith.training.lora.train_lora) on the Gemini tuning
tutorial's 15 examples, monkeypatching the recipe constants (LORA_RANK, LORA_ALPHA,
LORA_TARGETS) and scaling the user's learning rate, then evaluates greedily (temperature 0)
on the 15 training inputs, a 32-input held-out set of the same kinds, and the tutorial's two
generalisation probes (LXIII -> LXIV, 六 -> 七).

Usage (from the repository root):
    .venv/bin/python bench/recipe_sweep.py [--base-model-dir DIR] [--results FILE] CONFIG ...
where CONFIG is  bs=4,r=8,a=16,t=attn,lr=1,seed=0   (t: attn | all ; lr: scale on 1e-3)
or  untuned  (the base model with no adapter). Results are printed and appended as JSON lines
to FILE (default bench/recipe-results.jsonl). The findings are in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from peft import PeftModel

import tunesmith.training.lora as lora
from tunesmith.config import Settings
from tunesmith.domain.resources import Hyperparameters, TuningExample, Turn
from tunesmith.training.base_models import Catalog, load_base_model

REPO = Path(__file__).resolve().parents[1]
BASE_RATE = 1e-3  # the tutorial's learning rate
EPOCHS = 5

TRAIN = [
    ("1", "2"), ("3", "4"), ("-3", "-2"), ("twenty two", "twenty three"),
    ("two hundred", "two hundred one"), ("ninety nine", "one hundred"), ("8", "9"),
    ("-98", "-97"), ("1,000", "1,001"), ("10,100,000", "10,100,001"),
    ("thirteen", "fourteen"), ("eighty", "eighty one"), ("one", "two"),
    ("three", "four"), ("seven", "eight"),
]  # fmt: skip

# New inputs of the tutorial's kinds, following its conventions ("two hundred one", no
# "and"; commas kept in thousands). 14 digit inputs, 18 English number words.
HELD_OUT = [
    ("5", "6"), ("0", "1"), ("41", "42"), ("99", "100"), ("123", "124"), ("768", "769"),
    ("19", "20"), ("-10", "-9"), ("-7", "-6"), ("-250", "-249"), ("2,000", "2,001"),
    ("5,430", "5,431"), ("12,345", "12,346"), ("3,000,000", "3,000,001"),
    ("twelve", "thirteen"), ("fifty", "fifty one"), ("forty five", "forty six"),
    ("one hundred", "one hundred one"), ("seventy seven", "seventy eight"), ("six", "seven"),
    ("nineteen", "twenty"), ("thirty", "thirty one"), ("two", "three"), ("nine", "ten"),
    ("eleven", "twelve"), ("sixty three", "sixty four"), ("thirty nine", "forty"),
    ("three hundred", "three hundred one"), ("fifteen", "sixteen"), ("twenty", "twenty one"),
    ("eighty eight", "eighty nine"), ("four", "five"),
]  # fmt: skip
PROBES = [("LXIII", "LXIV"), ("六", "七")]
assert not {x for x, _ in HELD_OUT} & {x for x, _ in TRAIN}

TARGETS = {
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


def parse(spec: str) -> dict:
    cfg = {"bs": 4, "r": 8, "a": None, "t": "attn", "lr": 1.0, "seed": 0}
    for part in spec.split(","):
        key, value = part.split("=")
        cfg[key] = value if key == "t" else float(value) if key == "lr" else int(value)
    if cfg["a"] is None:
        cfg["a"] = 2 * cfg["r"]
    return cfg


@torch.no_grad()
def greedy(model, codec, text: str, max_new: int = 16) -> str:
    ids = torch.tensor([codec.encode_prompt([Turn("user", text)])])
    stop = set(codec.stop_token_ids)
    out: list[int] = []
    past = None
    step_ids = ids
    for _ in range(max_new):
        res = model(input_ids=step_ids, past_key_values=past, use_cache=True)
        past = res.past_key_values
        nxt = int(res.logits[0, -1].argmax())
        if nxt in stop:
            break
        out.append(nxt)
        step_ids = torch.tensor([[nxt]])
    return codec.tokenizer.decode(out, skip_special_tokens=True).strip()


def score(model, codec, pairs):
    got = [(x, y, greedy(model, codec, x)) for x, y in pairs]
    return sum(g == y for _, y, g in got), got


def run(base, cfg: dict) -> dict:
    lora.LORA_RANK = cfg["r"]
    lora.LORA_ALPHA = cfg["a"]
    lora.LORA_TARGETS = TARGETS[cfg["t"]]
    hp = Hyperparameters(EPOCHS, cfg["bs"], BASE_RATE * cfg["lr"])
    examples = [TuningExample(x, y) for x, y in TRAIN]
    work = Path(tempfile.mkdtemp(prefix="tunesmith-sweep-"))
    losses: list[float] = []
    t0 = time.perf_counter()
    lora.train_lora(
        base,
        examples,
        hp,
        cfg["seed"],
        work / "adapter",
        lora.Checkpoint(work / "ckpt.pt"),
        on_step=lambda s: losses.append(s.mean_loss),
        checkpoint_interval=1e9,
    )
    train_s = time.perf_counter() - t0
    assert not any("lora_" in n for n, _ in base.model.named_modules()), "adapter leaked"
    model = PeftModel.from_pretrained(base.model, work / "adapter")
    model.eval()
    t1 = time.perf_counter()
    train_ok, train_out = score(model, base.codec, TRAIN)
    held_ok, held_out = score(model, base.codec, HELD_OUT)
    _, probe_out = score(model, base.codec, PROBES)
    eval_s = time.perf_counter() - t1
    model.unload()
    base.model.eval()
    shutil.rmtree(work, ignore_errors=True)
    return {
        **cfg,
        "steps": len(losses),
        "train_s": round(train_s, 2),
        "eval_s": round(eval_s, 2),
        "final_loss": round(sum(losses[-3:]) / 3, 4),
        "max_loss": round(max(losses), 3),
        "train_acc": train_ok,
        "held_acc": held_ok,
        "probes": {x: g for x, _, g in probe_out},
        "train_wrong": {x: g for x, y, g in train_out if g != y},
        "held_wrong": {x: g for x, y, g in held_out if g != y},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="LoRA recipe sweep on the default base model")
    parser.add_argument("configs", nargs="+", help="bs=4,r=8,a=16,t=attn,lr=1,seed=0 | untuned")
    parser.add_argument("--base-model-dir", type=Path, default=REPO / ".tunesmith-test-cache")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "recipe-results.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(2)
    base = load_base_model(Catalog(Settings()).default, args.base_model_dir)
    for spec in args.configs:
        if spec == "untuned":  # the base model with no adapter, for reference
            base.model.eval()
            result = {
                "config": "untuned",
                "train_acc": score(base.model, base.codec, TRAIN)[0],
                "held_acc": score(base.model, base.codec, HELD_OUT)[0],
                "probes": {x: g for x, _, g in score(base.model, base.codec, PROBES)[1]},
            }
        else:
            result = run(base, parse(spec))
        print(json.dumps(result, ensure_ascii=False), flush=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
