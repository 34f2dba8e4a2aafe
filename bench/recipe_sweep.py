"""LoRA recipe sweep for Tunesmith's default base model (Gemma 3 270M, pretrained).

Trains the Gemini tuning tutorial's job (15 examples, batch 4, learning rate 0.001, 5
epochs) with the project's own loop (tunesmith.training.lora.train_lora) and a Recipe
(tunesmith.training.recipe) that differs from the default in the fields a spec names, once
per seed; then scores greedy answers (temperature 0) on the training inputs and on six
disjoint held-out probe sets, and prints a table per recipe.

Usage (from the repository root; `make recipe-sweep` runs it):
    .venv/bin/python bench/recipe_sweep.py [--seeds 0,1,2,3] [--results FILE] RECIPE ...
    .venv/bin/python bench/recipe_sweep.py --table FILE
where RECIPE is '' (the default) or fields to change, e.g. drop=0.1,neft=5 (keys below:
RECIPE_KEYS; bs and lr, a scale on 0.001, change the user's side), or `untuned` (the base
model with no adapter). Each run is printed and appended as a JSON line to FILE (default
bench/recipe-results.jsonl). The findings are in docs/QUALITY.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from peft import PeftModel

import tunesmith.training.lora as lora
from tunesmith.config import Settings
from tunesmith.domain.resources import Hyperparameters, TuningExample, Turn
from tunesmith.training.base_models import Catalog, load_base_model
from tunesmith.training.evaluation import EXTRA_ANSWER_TOKENS, greedy_answer
from tunesmith.training.recipe import DEFAULT_RECIPE, Recipe

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

# Held-out probe sets, disjoint from the training inputs and from each other, following the
# tutorial's conventions ("two hundred one", no "and"; commas kept in thousands). The recipe
# is chosen on the "a" sets; the "b" sets, Roman numerals and other languages only report.
PROBE_SETS = {
    "digits a": [
        ("5", "6"), ("0", "1"), ("41", "42"), ("99", "100"), ("123", "124"), ("768", "769"),
        ("19", "20"), ("-10", "-9"), ("-7", "-6"), ("-250", "-249"), ("2,000", "2,001"),
        ("5,430", "5,431"), ("12,345", "12,346"), ("3,000,000", "3,000,001"),
    ],
    "words a": [
        ("twelve", "thirteen"), ("fifty", "fifty one"), ("forty five", "forty six"),
        ("one hundred", "one hundred one"), ("seventy seven", "seventy eight"), ("six", "seven"),
        ("nineteen", "twenty"), ("thirty", "thirty one"), ("two", "three"), ("nine", "ten"),
        ("eleven", "twelve"), ("sixty three", "sixty four"), ("thirty nine", "forty"),
        ("three hundred", "three hundred one"), ("fifteen", "sixteen"),
        ("twenty", "twenty one"), ("eighty eight", "eighty nine"), ("four", "five"),
    ],
    "digits b": [
        ("2", "3"), ("7", "8"), ("16", "17"), ("58", "59"), ("86", "87"), ("109", "110"),
        ("301", "302"), ("440", "441"), ("-1", "0"), ("-15", "-14"), ("-333", "-332"),
        ("2,024", "2,025"), ("7,500", "7,501"), ("1,000,000", "1,000,001"),
    ],
    "words b": [
        ("five", "six"), ("ten", "eleven"), ("seventeen", "eighteen"),
        ("twenty one", "twenty two"), ("thirty four", "thirty five"), ("forty", "forty one"),
        ("fifty six", "fifty seven"), ("sixty", "sixty one"), ("seventy", "seventy one"),
        ("eighty four", "eighty five"), ("ninety", "ninety one"), ("fourteen", "fifteen"),
        ("sixteen", "seventeen"), ("five hundred", "five hundred one"),
    ],
    "roman": [
        ("II", "III"), ("IV", "V"), ("VII", "VIII"), ("IX", "X"), ("XII", "XIII"),
        ("XV", "XVI"), ("XIX", "XX"), ("XXIV", "XXV"), ("XL", "XLI"), ("LXIII", "LXIV"),
        ("XC", "XCI"), ("C", "CI"),
    ],
    "other languages": [
        ("六", "七"), ("三", "四"), ("dos", "tres"), ("cinco", "seis"), ("cinq", "six"),
        ("huit", "neuf"), ("zwei", "drei"), ("vier", "fünf"), ("uno", "dos"),
        ("sieben", "acht"),
    ],
}  # fmt: skip
PROBED = [x for pairs in PROBE_SETS.values() for x, _ in pairs]
assert len(PROBED) == len(set(PROBED)), "probe sets overlap"
assert not set(PROBED) & {x for x, _ in TRAIN}, "a probe is a training input"

TARGETS = {
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "vo": ("v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
# Spec keys: the user's side (bs, lr as a scale on 1e-3, seed) and the recipe's fields.
RECIPE_KEYS = {
    "r": ("rank", int), "a": ("alpha", float), "t": ("targets", TARGETS.__getitem__),
    "drop": ("dropout", float), "wd": ("weight_decay", float), "warm": ("warmup", float),
    "decay": ("decay", str), "neft": ("neftune_alpha", float),
    "avg": ("average_last", float), "init": ("init", str), "plw": ("prompt_loss_weight", float),
}  # fmt: skip


def parse(spec: str) -> tuple[dict, Recipe]:
    """ "bs=4,lr=1,seed=0,neft=5,decay=cosine": the user's settings and a recipe that differs
    from the default in the fields named."""
    user = {"bs": 4, "lr": 1.0, "seed": 0}
    changes = {}
    for part in filter(None, spec.split(",")):
        key, value = part.split("=")
        if key in user:
            user[key] = float(value) if key == "lr" else int(value)
        else:
            field, kind = RECIPE_KEYS[key]
            changes[field] = kind(value)
    return user, replace(DEFAULT_RECIPE, **changes)


def greedy(model, codec, text: str, expected: str) -> str:
    """The temperature-0 answer, as a job's evaluation decodes it."""
    prompt = codec.encode_prompt([Turn("user", text)])
    limit = len(codec.tokenizer(expected, add_special_tokens=False)["input_ids"])
    tokens = greedy_answer(model, prompt, limit + EXTRA_ANSWER_TOKENS, set(codec.stop_token_ids))
    text = codec.tokenizer.decode(
        tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return text.strip()


def score(model, codec) -> dict:
    """Right answers per probe set, and the wrong ones."""
    result: dict = {"wrong": {}}
    for group, pairs in {"train": TRAIN, **PROBE_SETS}.items():
        got = [(x, y, greedy(model, codec, x, y)) for x, y in pairs]
        result[group] = sum(g == y for _, y, g in got)
        result["wrong"].update({x: g for x, y, g in got if g != y})
    return result


def run(base, spec: str) -> dict:
    user, recipe = parse(spec)
    hp = Hyperparameters(EPOCHS, user["bs"], BASE_RATE * user["lr"])
    examples = [TuningExample(x, y) for x, y in TRAIN]
    work = Path(tempfile.mkdtemp(prefix="tunesmith-sweep-"))
    losses: list[float] = []
    t0 = time.perf_counter()
    lora.train_lora(
        base,
        examples,
        hp,
        user["seed"],
        work / "adapter",
        lora.Checkpoint(work / "ckpt.pt"),
        on_step=lambda s: losses.append(s.mean_loss),
        checkpoint_interval=1e9,
        recipe=recipe,
    )
    train_s = time.perf_counter() - t0
    assert not any("lora_" in n for n, _ in base.model.named_modules()), "adapter leaked"
    model = PeftModel.from_pretrained(base.model, work / "adapter")
    model.eval()
    scores = score(model, base.codec)
    model.unload()
    base.model.eval()
    shutil.rmtree(work, ignore_errors=True)
    return {
        "spec": spec,
        **user,
        "train_s": round(train_s, 2),
        "final_loss": round(sum(losses[-3:]) / 3, 4),
        **scores,
    }


def summary(results: list[dict]) -> None:
    """A markdown table: per recipe, the mean (and range) over seeds of each probe set."""
    groups = ["train", *PROBE_SETS]
    sizes = {"train": len(TRAIN), **{g: len(p) for g, p in PROBE_SETS.items()}}
    held = sum(len(p) for p in PROBE_SETS.values())
    print(f"\n| recipe | seeds | {' | '.join(f'{g} /{sizes[g]}' for g in groups)} "
          f"| all held-out % (min-max) | train s |")  # fmt: skip
    print("|---" * (len(groups) + 4) + "|")
    by_recipe: dict[str, list[dict]] = {}
    for r in results:
        by_recipe.setdefault(r["recipe"], []).append(r)
    for recipe, runs in by_recipe.items():
        cells = [f"{statistics.mean(r[g] for r in runs):.1f}" for g in groups]
        shares = [100 * sum(r[g] for g in PROBE_SETS) / held for r in runs]
        print(
            f"| {recipe or 'default'} | {len(runs)} | {' | '.join(cells)} "
            f"| {statistics.mean(shares):.0f} ({min(shares):.0f}-{max(shares):.0f}) "
            f"| {statistics.mean(r['train_s'] for r in runs):.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="LoRA recipe sweep on the default base model")
    parser.add_argument(
        "recipes", nargs="*", help="'' (the default) | neft=5,decay=cosine | untuned"
    )
    parser.add_argument("--table", type=Path, help="only print the table of a results file")
    parser.add_argument("--seeds", default="0,1,2,3", help="seeds each recipe runs with")
    parser.add_argument("--base-model-dir", type=Path, default=REPO / ".tunesmith-test-cache")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "recipe-results.jsonl")
    args = parser.parse_args()
    if args.table:
        summary([json.loads(line) for line in args.table.read_text().splitlines()])
        return
    torch.set_num_threads(2)
    base = load_base_model(Catalog(Settings()).default, args.base_model_dir)
    results = []
    for recipe in args.recipes:
        if recipe == "untuned":  # the base model with no adapter, for reference
            base.model.eval()
            result = {"recipe": "untuned", **score(base.model, base.codec)}
            print(json.dumps(result, ensure_ascii=False), flush=True)
            continue
        for seed in args.seeds.split(","):
            result = {"recipe": recipe, **run(base, f"{recipe},seed={seed}")}
            results.append(result)
            print(json.dumps(result, ensure_ascii=False), flush=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(result, ensure_ascii=False) + "\n")
    summary(results)


if __name__ == "__main__":
    main()
