"""The LoRA training loop: one job, read top to bottom.

Loss is taken on the answer tokens only (and the prompt's, when the recipe weighs them),
and logits are computed only at the positions that predict them: for Gemma 3 270M the
262k-token output projection is most of the model's cost per token. Each step's examples
are packed into one sequence without padding (training/forward.py).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from tunesmith.domain.resources import Hyperparameters, TuningExample
from tunesmith.domain.tuning import batch_bounds, epoch_after_step, total_steps
from tunesmith.training.base_models import LoadedBaseModel
from tunesmith.training.forward import Pair, decoder_for, pack, step_loss
from tunesmith.training.model_builds import building_models, check_stored_config
from tunesmith.training.recipe import DEFAULT_RECIPE, Recipe, WeightAverage, step_seed


@dataclass(frozen=True)
class StepResult:
    step: int
    epoch: int
    mean_loss: float
    tokens: int  # tokens the step trained on: see batch_tokens


def epoch_stream(examples: int, epochs: int, seed: int) -> list[int]:
    """Example indices, every epoch shuffled on its own seed so a resumed job sees the
    same batches as the run it replaces."""
    stream: list[int] = []
    for epoch in range(epochs):
        order = list(range(examples))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        stream.extend(order)
    return stream


def step_batches(encoded: list[Pair], stream: list[int], batch_size: int) -> list[list[Pair]]:
    """Every step's batch, in order (step n trains on batches[n - 1])."""
    steps = range(1, total_steps(len(stream), 1, batch_size) + 1)  # the stream holds every epoch
    bounds = (batch_bounds(step, batch_size, len(stream)) for step in steps)
    return [[encoded[i] for i in stream[start:end]] for start, end in bounds]


def batch_tokens(pairs: list[Pair]) -> int:
    """The tokens a batch trains on: each example's prompt (BOS and turn markers included)
    and answer (its end token included), as the forward pass reads them; padding is not
    counted. The loss is taken on the answer tokens only, but every one of these is computed."""
    return sum(len(prompt) + len(answer) for prompt, answer in pairs)


def new_optimizer(
    params: list[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay), as one fused kernel over every LoRA tensor where
    torch has one for them: the per-tensor loop costs about ten small ops per tensor."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def attach_lora(base: LoadedBaseModel, init_adapter: Path | None, recipe: Recipe) -> PeftModel:
    """Wraps the shared base model with a fresh trainable adapter, or with a tuned model's
    adapter to continue from it. `detach` must undo this before the base is reused."""
    if init_adapter is not None:
        check_stored_config(init_adapter)
        with building_models():
            return PeftModel.from_pretrained(base.model, init_adapter, is_trainable=True)
    config = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        target_modules=list(recipe.targets),
        lora_dropout=recipe.dropout,
        init_lora_weights=True if recipe.init == "kaiming" else recipe.init,
        task_type="CAUSAL_LM",
    )
    with building_models():
        return get_peft_model(base.model, config)


def detach(model: PeftModel) -> None:
    """Removes the LoRA layers and puts the shared base back in eval mode (model.train()
    reached it, and unload does not undo that)."""
    model.unload().eval()


@dataclass(frozen=True)
class Checkpoint:
    """Adapter, optimizer and step, written atomically so a resumed job continues."""

    path: Path

    def save(
        self,
        model: PeftModel,
        optimizer: torch.optim.Optimizer,
        step: int,
        average: WeightAverage,
    ) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_suffix(".tmp")
        state = {
            "step": step,
            "adapter": get_peft_model_state_dict(model),
            "optimizer": optimizer.state_dict(),
            "average": average.state_dict(),
        }
        torch.save(state, staging)
        os.replace(staging, self.path)

    def restore(
        self, model: PeftModel, optimizer: torch.optim.Optimizer, average: WeightAverage
    ) -> int:
        """The number of steps already done (0 without a checkpoint)."""
        if not self.path.exists():
            return 0
        state = torch.load(self.path, weights_only=True)
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        if "average" in state:  # checkpoints written before averaging have none
            average.load_state_dict(state["average"])
        return int(state["step"])


def train_lora(
    base: LoadedBaseModel,
    examples: list[TuningExample],
    hp: Hyperparameters,
    seed: int,
    adapter_out: Path,
    checkpoint: Checkpoint,
    on_step: Callable[[StepResult], None],
    on_resume: Callable[[int, int], None] = lambda step, tokens: None,
    init_adapter: Path | None = None,
    checkpoint_interval: float = 10.0,
    after_step: Callable[[PeftModel, StepResult], None] = lambda model, result: None,
    recipe: Recipe = DEFAULT_RECIPE,
) -> None:
    """Trains a LoRA adapter and saves it (peft format) to `adapter_out`. `on_resume` gets
    the steps a checkpoint already holds and the tokens those steps trained on;
    `after_step` sees the adapter after each step (evaluation.EpochHook)."""
    torch.manual_seed(seed)
    encoded = [base.codec.encode_example(e.text_input, e.output) for e in examples]
    stream = epoch_stream(len(examples), hp.epoch_count, seed)
    batches = step_batches(encoded, stream, hp.batch_size)
    steps = len(batches)
    device = base.model.device

    model = attach_lora(base, init_adapter, recipe)
    try:
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = new_optimizer(trainable, hp.learning_rate, recipe.weight_decay)
        average = WeightAverage(trainable, recipe.average_last, steps)
        done = checkpoint.restore(model, optimizer, average)
        on_resume(done, sum(batch_tokens(pairs) for pairs in batches[:done]))
        causal_lm = model.get_base_model()
        decode = decoder_for(causal_lm)
        saved_at = time.monotonic()
        for step in range(done + 1, steps + 1):
            torch.manual_seed(step_seed(seed, step))
            for group in optimizer.param_groups:
                group["lr"] = hp.learning_rate * recipe.learning_rate_scale(step, steps)
            pairs = batches[step - 1]
            packed = pack(pairs, recipe.prompt_loss_weight, device)
            objective, loss = step_loss(causal_lm, decode, packed, recipe.neftune_alpha)
            objective.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            average.add(step)
            epoch = epoch_after_step(step, hp.batch_size, len(examples))
            result = StepResult(step, epoch, loss.item(), batch_tokens(pairs))
            on_step(result)
            after_step(model, result)
            if step < steps and time.monotonic() - saved_at >= checkpoint_interval:
                checkpoint.save(model, optimizer, step, average)
                saved_at = time.monotonic()
        if average.count:
            average.apply()
        model.save_pretrained(adapter_out)
    finally:
        detach(model)
