"""The one prompt template, shared by training and inference.

A tuned model only answers well when it sees its input framed exactly as it was framed in
training, so both sides call :func:`PromptCodec.encode_prompt`. The frame is the base
model's own chat turn markers when its tokenizer ships a chat template (a handful of tokens)
and a plain newline otherwise. No system prompt is ever added: it would cost hundreds of tokens per example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunesmith.domain.resources import Turn

__all__ = ["CHATML", "GEMMA", "PromptCodec", "PromptFormat", "Turn", "detect_prompt_format"]


@dataclass(frozen=True)
class PromptFormat:
    user_open: str
    user_close: str
    model_open: str
    model_close: str  # starts with the token the model emits to end its answer

    def render(self, turns: Sequence[Turn]) -> str:
        """The text of a conversation, ending where the model's answer begins."""
        parts = []
        for turn in turns:
            if turn.role == "user":
                parts.append(f"{self.user_open}{turn.text}{self.user_close}")
            else:
                parts.append(f"{self.model_open}{turn.text}{self.model_close}")
        parts.append(self.model_open)
        return "".join(parts)


GEMMA = PromptFormat(
    "<start_of_turn>user\n", "<end_of_turn>\n", "<start_of_turn>model\n", "<end_of_turn>\n"
)
CHATML = PromptFormat(
    "<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n", "<|im_end|>\n"
)


def plain_format(eos_token: str) -> PromptFormat:
    """Input, newline, answer, EOS: for pretrained models that never learned chat turns.
    Measured on the tutorial task with Gemma 3 270M, it generalises better than chat turns
    whose marker embeddings the base model never trained (docs/PERFORMANCE.md)."""
    return PromptFormat("", "\n", "", f"{eos_token}\n")


def detect_prompt_format(tokenizer) -> PromptFormat:
    """The model's own chat format if its tokenizer ships a chat template, else plain."""
    template = tokenizer.chat_template or ""
    if "<start_of_turn>" in template:
        return GEMMA
    if "<|im_start|>" in template:
        return CHATML
    return plain_format(tokenizer.eos_token)


@dataclass(frozen=True)
class PromptCodec:
    """Turns conversations into token ids for one tokenizer and format."""

    tokenizer: object
    format: PromptFormat

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: the turn-closing marker and the tokenizer's EOS."""
        ids = {self.answer_end_id}
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(i for i in ids if i is not None)

    @property
    def answer_end_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.format.model_close.strip())

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, turns: Sequence[Turn]) -> list[int]:
        ids = self._ids(self.format.render(turns))
        bos = self.tokenizer.bos_token_id
        # ChatML tokenizers use <|im_start|> as BOS: the first turn already begins with it.
        if bos is None or (ids and ids[0] == bos):
            return ids
        return [bos, *ids]

    def encode_example(self, text_input: str, output: str) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids): the loss is taken on the answer ids only."""
        prompt = self.encode_prompt([Turn("user", text_input)])
        return prompt, [*self._ids(output), self.answer_end_id]
