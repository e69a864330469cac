"""The batched decode loop on a small random Qwen2, in process: padding, stopping, log-prob modes, abort."""

from __future__ import annotations

import threading

import pytest
import torch
import transformers
from conftest import tiny_qwen2_config

from credit_plugin.dev.rollout.decode import generate_batch
from credit_plugin.dev.rollout.sampling import SamplingSpec

PAD = 0


@pytest.fixture(scope="module")
def model() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(tiny_qwen2_config(256, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0)
    return model


def spec(max_tokens: int = 8, temperature: float = 0.0, stop: tuple[int, ...] = ()) -> SamplingSpec:
    return SamplingSpec(
        max_tokens=max_tokens, temperature=temperature, top_k=0, top_p=1.0, stop_token_ids=stop, return_log_probs=True
    )


def decode(model, prompts, specs, mode="processed_logprobs", seed=0, abort=None):
    return generate_batch(
        model,
        prompts,
        specs,
        pad_token_id=PAD,
        logprobs_mode=mode,
        generator=torch.Generator().manual_seed(seed),
        abort=abort,
    )


def forward_log_softmax(model, prompt, response, temperature=1.0) -> torch.Tensor:
    """shape (len(response),): log p(response_t | prefix) under logits / temperature, one plain forward."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1] / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


PROMPTS = [[5, 17, 99], [42], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]]


def test_left_padded_batch_equals_one_prompt_at_a_time(model):
    batched = decode(model, PROMPTS, [spec()] * 3)
    for prompt, out in zip(PROMPTS, batched, strict=True):
        (alone,) = decode(model, [prompt], [spec()])
        assert out.token_ids == alone.token_ids and out.finish_reason == "length"
        torch.testing.assert_close(torch.tensor(out.log_probs), torch.tensor(alone.log_probs), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("mode", "scored_temperature"), [("processed_logprobs", 0.5), ("raw_logprobs", 1.0)])
def test_log_prob_modes(model, mode, scored_temperature):
    outputs = decode(model, PROMPTS, [spec(temperature=0.5)] * 3, mode=mode)
    for prompt, out in zip(PROMPTS, outputs, strict=True):
        expected = forward_log_softmax(model, prompt, out.token_ids, scored_temperature)
        torch.testing.assert_close(torch.tensor(out.log_probs), expected, rtol=0, atol=1e-4)


def test_rows_stop_on_their_own_stop_ids_or_budgets(model):
    (free,) = decode(model, [PROMPTS[0]], [spec(max_tokens=8)])
    stop = free.token_ids[2]
    first = free.token_ids.index(stop)
    outputs = decode(model, [PROMPTS[0], PROMPTS[0], PROMPTS[1]], [spec(8, stop=(stop,)), spec(2), spec(5)])
    assert outputs[0].token_ids == free.token_ids[: first + 1] and outputs[0].finish_reason == "stop"
    assert outputs[1].token_ids == free.token_ids[:2] and outputs[1].finish_reason == "length"
    assert len(outputs[2].token_ids) == 5 and len(outputs[2].log_probs) == 5


def test_sampling_is_reproducible_for_a_seed(model):
    a = decode(model, PROMPTS, [spec(temperature=1.0)] * 3, seed=3)
    b = decode(model, PROMPTS, [spec(temperature=1.0)] * 3, seed=3)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


def test_abort_ends_after_the_current_step(model):
    abort = threading.Event()
    abort.set()
    outputs = decode(model, PROMPTS, [spec(max_tokens=8)] * 3, abort=abort)
    assert [len(o.token_ids) for o in outputs] == [1, 1, 1]
    assert {o.finish_reason for o in outputs} == {"abort"}


def test_unknown_log_prob_mode_is_named(model):
    with pytest.raises(ValueError, match="logprobs_mode='processed_logits'"):
        decode(model, PROMPTS, [spec()] * 3, mode="processed_logits")
