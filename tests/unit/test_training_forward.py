"""The packed training forward computes the loss of the padded, one-row-per-example
forward through transformers: per-example mean answer-token loss, then the batch mean, and
the prompt tokens' loss at the recipe's weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from tiny_model import tiny_gemma3
from tunesmith.training import forward
from tunesmith.training.forward import (
    GemmaDecoder,
    LengthRouted,
    PackedTransformersDecoder,
    PaddedTransformersDecoder,
    attention_mask,
    decoder_for,
    pack,
    step_loss,
    warm_up,
)
from tunesmith.training.prepacked import frozen_matmul, prepackable

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
EVERY_LINEAR = [*ATTENTION, "gate_proj", "up_proj", "down_proj"]
# Prompts and answers of uneven lengths; the packed sequence (and the longest example) runs
# past the Gemma model's window of 4.
PAIRS = [
    ([2, 17, 33], [40, 41]),
    ([2, 5], [6, 7, 8, 9, 10, 11]),
    ([2, 90, 91, 92, 93], [94]),
    ([2], [61, 62]),
]


def reference_loss(causal_lm, pairs, prompt_weight: float = 0.0) -> torch.Tensor:
    """Right-padded rows through the whole transformers model, the loss written plainly."""
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.zeros((len(pairs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (prompt, answer) in enumerate(pairs):
        ids[row, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        mask[row, : len(prompt) + len(answer)] = 1
    logits = causal_lm(input_ids=ids, attention_mask=mask).logits.float()
    answers, prompts = [], []
    for row, (prompt, answer) in enumerate(pairs):
        predicted = logits[row, len(prompt) - 1 : len(prompt) + len(answer) - 1]
        answers.append(F.cross_entropy(predicted, torch.tensor(answer)))
        if len(prompt) > 1:
            prompts.append(
                F.cross_entropy(logits[row, : len(prompt) - 1], torch.tensor(prompt[1:]))
            )
        else:
            prompts.append(torch.zeros(()))
    return torch.stack(answers).mean() + prompt_weight * torch.stack(prompts).mean()


def tiny_causal_lm(family: str, **config):
    """A random 2-layer model of a transformers family ("Llama", "Mistral")."""
    import transformers

    config_class = getattr(transformers, f"{family}Config")
    model_class = getattr(transformers, f"{family}ForCausalLM")
    torch.manual_seed(0)
    return model_class(
        config_class(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **config,
        )
    ).eval()


def tiny_llama():
    return tiny_causal_lm("Llama")


def tiny_mistral():
    """A sliding window without layer types: a packed 4-D mask would drop the window."""
    return tiny_causal_lm("Mistral", sliding_window=4)


def with_lora(model, targets: list[str], **options):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, **options)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: the deltas would not be tested
            torch.nn.init.normal_(param, std=0.1)
    return peft_model


def chosen(decode):
    """The decoder a step of a few tokens runs through."""
    return decode.packed if isinstance(decode, LengthRouted) else decode


def loss_and_grads(peft_model, compute) -> tuple[float, list[torch.Tensor]]:
    params = [p for p in peft_model.parameters() if p.requires_grad]
    for param in params:
        param.grad = None
    loss = compute()
    loss.backward()
    return loss.item(), [p.grad.clone() for p in params]


def assert_same(got: tuple[float, list], expected: tuple[float, list]) -> None:
    assert got[0] == pytest.approx(expected[0], rel=1e-5)
    for have, want in zip(got[1], expected[1], strict=True):
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("build", "targets", "prompt_weight", "decoder"),
    [
        (tiny_gemma3, ATTENTION, 0.0, GemmaDecoder),
        (tiny_gemma3, EVERY_LINEAR, 0.0, GemmaDecoder),
        (tiny_gemma3, EVERY_LINEAR, 0.5, GemmaDecoder),
        (lambda: tiny_gemma3(softcap=None), ATTENTION, 0.0, GemmaDecoder),
        (tiny_llama, EVERY_LINEAR, 0.5, PackedTransformersDecoder),
        (tiny_mistral, ATTENTION, 0.5, PaddedTransformersDecoder),
    ],
)
def test_packed_loss_and_gradients_match_the_padded_forward(build, targets, prompt_weight, decoder):
    peft_model = with_lora(build(), targets)
    causal_lm = peft_model.get_base_model()
    decode = decoder_for(causal_lm)
    assert type(chosen(decode)) is decoder
    packed = pack(PAIRS, prompt_weight)

    expected = loss_and_grads(peft_model, lambda: reference_loss(causal_lm, PAIRS, prompt_weight))
    got = loss_and_grads(peft_model, lambda: step_loss(causal_lm, decode, packed)[0])
    assert_same(got, expected)


@pytest.mark.parametrize("decoder", [PackedTransformersDecoder, PaddedTransformersDecoder])
def test_transformers_decoders_of_gemma_match_the_padded_forward(decoder):
    peft_model = with_lora(tiny_gemma3(), EVERY_LINEAR)
    causal_lm = peft_model.get_base_model()
    packed = pack(PAIRS, 0.5)
    expected = loss_and_grads(peft_model, lambda: reference_loss(causal_lm, PAIRS, 0.5))
    got = loss_and_grads(peft_model, lambda: step_loss(causal_lm, decoder(causal_lm), packed)[0])
    assert_same(got, expected)


def test_the_reported_loss_is_the_answer_loss_whatever_the_prompt_weight():
    causal_lm = with_lora(tiny_gemma3(), ATTENTION).get_base_model()
    decode = decoder_for(causal_lm)
    with torch.no_grad():
        plain, reported = step_loss(causal_lm, decode, pack(PAIRS))
        weighted, same = step_loss(causal_lm, decode, pack(PAIRS, 0.5))
        expected = reference_loss(causal_lm, PAIRS)
    assert plain is reported and weighted > reported
    assert reported.item() == pytest.approx(expected.item(), rel=1e-5)
    assert same.item() == pytest.approx(expected.item(), rel=1e-5)


def test_lora_dropout_and_embedding_noise_in_gemma_decoder_draw_as_transformers_does():
    """Same seed, same draws: LoRA dropout per projection in peft's order, and NEFTune
    noise on the embedded packed sequence."""
    peft_model = with_lora(tiny_gemma3(), EVERY_LINEAR, lora_dropout=0.3)
    peft_model.train()
    causal_lm = peft_model.get_base_model()
    packed = pack(PAIRS, 0.5)

    def seeded(decode):
        torch.manual_seed(7)
        return step_loss(causal_lm, decode, packed, noise=5.0)[0]

    lean = GemmaDecoder(causal_lm)
    expected = loss_and_grads(peft_model, lambda: seeded(PackedTransformersDecoder(causal_lm)))
    got = loss_and_grads(peft_model, lambda: seeded(lean))
    assert_same(got, expected)
    peft_model.eval()  # dropout off, and no noise: the plain padded forward again
    quiet = loss_and_grads(peft_model, lambda: step_loss(causal_lm, lean, packed)[0])
    assert_same(quiet, loss_and_grads(peft_model, lambda: reference_loss(causal_lm, PAIRS, 0.5)))
    assert got[0] != pytest.approx(quiet[0], rel=1e-3)  # the draws were real


@pytest.mark.parametrize("options", [{"use_dora": True}, {"modules_to_save": ["input_layernorm"]}])
def test_an_adapter_the_gemma_decoder_cannot_run_goes_through_transformers(options):
    peft_model = with_lora(tiny_gemma3(), ATTENTION, **options)
    assert type(chosen(decoder_for(peft_model.get_base_model()))) is PackedTransformersDecoder


def test_a_step_too_long_to_pack_goes_padded_with_the_same_loss(monkeypatch):
    peft_model = with_lora(tiny_gemma3(), EVERY_LINEAR)
    causal_lm = peft_model.get_base_model()
    decode = decoder_for(causal_lm)
    packed = pack(PAIRS, 0.5)
    calls = []
    padded = decode.padded
    monkeypatch.setattr(decode, "padded", lambda *args: calls.append(1) or padded(*args))
    expected = loss_and_grads(peft_model, lambda: step_loss(causal_lm, decode, packed)[0])
    assert not calls

    monkeypatch.setattr(forward, "MAX_PACKED_TOKENS", len(packed.ids) - 1)
    got = loss_and_grads(peft_model, lambda: step_loss(causal_lm, decode, packed)[0])
    assert calls
    assert_same(got, expected)


def test_stacked_weights_hold_the_layers_weights_once():
    model = tiny_gemma3()
    attention = model.model.layers[0].self_attn
    stacked = GemmaDecoder(model).layers[0].qkv.weight
    for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
        assert linear.weight.untyped_storage().data_ptr() == stacked.untyped_storage().data_ptr()
    attention.k_proj.weight.data = attention.k_proj.weight.data.clone()  # replaced: rebuilt
    assert GemmaDecoder(model).layers[0].qkv.weight is not stacked


def test_gemma_decoder_in_bfloat16_stays_close_to_transformers():
    peft_model = with_lora(tiny_gemma3().to(torch.bfloat16), ATTENTION)
    causal_lm = peft_model.get_base_model()
    expected = reference_loss(causal_lm, PAIRS).item()
    got = step_loss(causal_lm, GemmaDecoder(causal_lm), pack(PAIRS))[1].item()
    assert got == pytest.approx(expected, rel=2e-2)


def test_pack_lays_examples_back_to_back_and_weights_each_example_equally():
    packed = pack([([2, 10], [11, 12]), ([2, 20, 21], [22])], prompt_weight=0.5)

    assert packed.ids.tolist() == [2, 10, 11, 12, 2, 20, 21, 22]
    assert packed.positions.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert packed.segments.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # the output at a token predicts the next one: answers 10 -> 11, 11 -> 12, 21 -> 22,
    # then prompts 2 -> 10, 2 -> 20, 20 -> 21
    assert packed.predictors.tolist() == [1, 2, 6, 0, 4, 5]
    assert packed.targets.tolist() == [11, 12, 22, 10, 20, 21]
    assert packed.weights.tolist() == [0.25, 0.25, 0.5, 0.25, 0.125, 0.125]
    assert (packed.answers, packed.rows, packed.width) == (3, 2, 4)


def test_attention_never_crosses_examples_and_respects_the_window():
    packed = pack([([2, 10], [11]), ([2], [20, 21])])
    full = attention_mask(packed)
    assert full[4].tolist() == [False, False, False, True, True, False]
    assert not full[2, 3]  # the first token of the second example sees nothing before it
    windowed = attention_mask(packed, window=2)
    assert windowed[2].tolist() == [False, True, True, False, False, False]


def test_warm_up_builds_the_stacked_weights_the_first_job_then_reuses():
    model = tiny_gemma3()
    warm_up(model)
    warmed = GemmaDecoder(model).layers[0].qkv.weight
    peft_model = with_lora(model, ATTENTION)
    job = GemmaDecoder(peft_model.get_base_model()).layers[0].qkv.weight
    assert job is warmed
    assert not any(p.grad is not None for p in peft_model.parameters())


@pytest.mark.skipif(
    not prepackable(torch.zeros(1, 1, dtype=torch.bfloat16)), reason="no oneDNN bf16 kernels"
)
def test_the_prepacked_output_projection_agrees_with_the_plain_one_in_bfloat16(monkeypatch):
    peft_model = with_lora(tiny_gemma3(softcap=None).to(torch.bfloat16), ATTENTION)
    causal_lm = peft_model.get_base_model()
    decode = decoder_for(causal_lm)
    packed = pack(PAIRS, 0.5)
    assert forward._output_matmul(causal_lm) is not None
    got = loss_and_grads(peft_model, lambda: step_loss(causal_lm, decode, packed)[0])
    monkeypatch.setattr(forward, "_output_matmul", lambda causal_lm: None)
    expected = loss_and_grads(peft_model, lambda: step_loss(causal_lm, decode, packed)[0])
    assert got[0] == pytest.approx(expected[0], rel=1e-2)
    for have, want in zip(got[1], expected[1], strict=True):
        torch.testing.assert_close(have, want, rtol=2e-2, atol=2e-3)


def test_float32_keeps_torchs_own_output_projection():
    assert forward._output_matmul(tiny_gemma3()) is None


@pytest.mark.skipif(
    not prepackable(torch.zeros(1, 1, dtype=torch.bfloat16)), reason="no oneDNN bf16 kernels"
)
def test_a_prepacked_weight_is_packed_once_and_again_after_a_change_in_place():
    weight = torch.randn(8, 4, dtype=torch.bfloat16)
    x = torch.randn(3, 4, dtype=torch.bfloat16, requires_grad=True)
    packed = frozen_matmul(weight)
    assert frozen_matmul(weight) is packed
    torch.testing.assert_close(packed(x), x @ weight.t())
    grad = torch.randn(3, 8, dtype=torch.bfloat16)
    packed(x).backward(grad)
    torch.testing.assert_close(x.grad, grad @ weight)
    weight.mul_(2)
    assert frozen_matmul(weight) is not packed
    torch.testing.assert_close(frozen_matmul(weight)(x), x @ weight.t())
