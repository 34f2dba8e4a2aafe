"""Evaluation on validation examples, and what a job does at epoch ends.

`EpochHook` runs after every training step: at each epoch end (the last step included) and
every `interval` steps it evaluates the adapter on the validation examples, and at each
epoch end it hands the adapter over to be kept. Evaluation runs in eval mode without
gradients and draws no random numbers, so it changes nothing about the training itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch
from peft import PeftModel

from tunesmith.domain.resources import Evaluation, TuningExample
from tunesmith.domain.tuning import epoch_after_step
from tunesmith.training.forward import Pair, decoder_for, pack, step_loss
from tunesmith.training.logits import vocab_logits
from tunesmith.training.lora import StepResult
from tunesmith.training.prompt import PromptCodec

EVAL_BATCH = 8  # validation examples per forward pass of the loss
EXTRA_ANSWER_TOKENS = 4  # a greedy answer may run this far past its expected one


@dataclass(frozen=True)
class Schedule:
    """When a job's steps end epochs and when they evaluate."""

    steps: int
    batch_size: int
    examples: int  # training examples
    epochs: int
    interval: int = 0  # evaluate every `interval` steps too; 0: at epoch ends only

    def epoch(self, step: int) -> int:
        """Complete epochs after `step` (a short last batch still ends the last epoch)."""
        return min(epoch_after_step(step, self.batch_size, self.examples), self.epochs)

    def ends_epoch(self, step: int) -> bool:
        return step == self.steps or self.epoch(step) > self.epoch(step - 1)

    def evaluates(self, step: int) -> bool:
        return self.ends_epoch(step) or (self.interval > 0 and step % self.interval == 0)


@torch.no_grad()
def validation_loss(model: PeftModel, pairs: list[Pair], interrupt: Callable[[], None]) -> float:
    """The loss training reports (each example's mean answer-token loss), averaged over
    examples."""
    causal_lm = model.get_base_model()
    decode = decoder_for(causal_lm)
    total = 0.0
    for start in range(0, len(pairs), EVAL_BATCH):
        interrupt()
        chunk = pairs[start : start + EVAL_BATCH]
        _, answer = step_loss(causal_lm, decode, pack(chunk, device=causal_lm.device))
        total += answer.item() * len(chunk)
    return total / len(pairs)


@torch.no_grad()
def greedy_answer(
    model: torch.nn.Module, prompt: list[int], limit: int, stops: set[int]
) -> list[int]:
    """Temperature-0 answer tokens, up to `limit` or a stop token (not included), of a
    tuned (peft) or a plain model."""
    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    ids, past, answer = torch.tensor([prompt], device=causal_lm.device), None, []
    for _ in range(limit):
        out = causal_lm.model(input_ids=ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = int(vocab_logits(causal_lm, out.last_hidden_state[:, -1]).argmax(-1))
        if token in stops:
            break
        answer.append(token)
        ids = torch.tensor([[token]], device=causal_lm.device)
    return answer


def exact_match(
    model: PeftModel,
    codec: PromptCodec,
    examples: list[TuningExample],
    pairs: list[Pair],
    interrupt: Callable[[], None],
) -> float:
    """The share of examples whose greedy answer equals the expected output (stripped).
    Each answer is decoded to its expected length and a few tokens more: a longer one
    cannot match."""
    stops = set(codec.stop_token_ids)
    hits = 0
    for example, (prompt, expected) in zip(examples, pairs, strict=True):
        interrupt()
        tokens = greedy_answer(model, prompt, len(expected) + EXTRA_ANSWER_TOKENS, stops)
        text = codec.tokenizer.decode(
            tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        hits += text.strip() == example.output.strip()
    return hits / len(examples)


@dataclass
class EpochHook:
    """Called after every step (train_lora's `after_step`): evaluates when the schedule
    says so and hands over the adapter at each epoch end."""

    codec: PromptCodec
    validation: list[TuningExample]
    schedule: Schedule
    on_evaluation: Callable[[Evaluation], None]
    on_epoch_end: Callable[[PeftModel, int, int], None]  # (model, epoch, step)
    interrupt: Callable[[], None] = lambda: None  # raises to stop (cancel, lease lost)
    losses: dict[int, float] = field(default_factory=dict)  # step -> its mean loss
    _pairs: list[Pair] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pairs = [self.codec.encode_example(e.text_input, e.output) for e in self.validation]

    def resumed(self, losses: dict[int, float]) -> None:
        """The losses of the steps a resumed job does not train again."""
        self.losses = dict(losses)

    def __call__(self, model: PeftModel, result: StepResult) -> None:
        self.losses[result.step] = result.mean_loss
        if self.validation and self.schedule.evaluates(result.step):
            self.on_evaluation(self.evaluate(model, result.step))
        if self.schedule.ends_epoch(result.step):
            self.on_epoch_end(model, self.schedule.epoch(result.step), result.step)

    def evaluate(self, model: PeftModel, step: int) -> Evaluation:
        was_training = model.training
        model.eval()
        try:
            loss = validation_loss(model, self._pairs, self.interrupt)
            accuracy = exact_match(model, self.codec, self.validation, self._pairs, self.interrupt)
        finally:
            model.train(was_training)
        return Evaluation(
            step=step,
            epoch=self.schedule.epoch(step),
            training_loss=self.training_loss(step),
            validation_loss=loss,
            exact_match=accuracy,
            examples=len(self.validation),
            create_time=datetime.now(UTC),
        )

    def training_loss(self, step: int) -> float | None:
        """The mean loss of the steps of the epoch `step` is in, up to `step`."""
        epoch = self.schedule.epoch(step - 1)
        losses = [
            loss
            for s, loss in self.losses.items()
            if s <= step and self.schedule.epoch(s - 1) == epoch
        ]
        return sum(losses) / len(losses) if losses else None
