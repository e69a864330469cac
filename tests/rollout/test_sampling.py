"""vLLM's sampling semantics: parameter defaults and validation, top-k/top-p masks, tempered logits, draws."""

from __future__ import annotations

import pytest
import torch

from credit_plugin.dev.rollout.sampling import (
    SamplingDefaults,
    choose_tokens,
    mask_top_k_top_p,
    processed_logits,
    resolve_sampling_params,
)

DEFAULTS = SamplingDefaults(
    temperature=1.0,
    top_k=-1,
    top_p=1.0,
    prompt_length=32,
    response_length=16,
    max_model_len=64,
    ignore_eos=False,
    eos_token_ids=(7, 9),
)


def kept_by_rule(logits: torch.Tensor, k: int, p: float) -> set[int]:
    """Reference for one row: the k largest, then the smallest prefix of them (by probability) reaching p."""
    order = logits.argsort(descending=True).tolist()
    if k > 0:
        order = order[:k]
    probs = torch.softmax(logits[order], dim=-1).tolist()
    kept, mass = [], 0.0
    for token, prob in zip(order, probs, strict=True):
        if mass >= p:
            break
        kept.append(token)
        mass += prob
    return set(kept)


def test_top_k_top_p_mask_keeps_exactly_the_reference_set():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 2
    top_k = torch.tensor([0, 1, 5, 0, 10, 3])
    top_p = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.8, 1e-6])
    masked = mask_top_k_top_p(logits, top_k, top_p)
    for row in range(6):
        kept = set(torch.isfinite(masked[row]).nonzero()[:, 0].tolist())
        assert kept == kept_by_rule(logits[row], int(top_k[row]), float(top_p[row])), row
        survivors = torch.isfinite(masked[row])
        torch.testing.assert_close(masked[row][survivors], logits[row][survivors])


def test_processed_logits_temper_sampled_rows_and_leave_greedy_rows_raw():
    torch.manual_seed(0)
    logits = torch.randn(3, 20)
    out = processed_logits(
        logits,
        temperature=torch.tensor([0.0, 0.5, 2.0]),
        top_k=torch.tensor([3, 0, 0]),
        top_p=torch.tensor([0.1, 1.0, 1.0]),
    )
    torch.testing.assert_close(out[0], logits[0])  # greedy: no temperature, no restriction
    torch.testing.assert_close(out[1], logits[1] / 0.5)
    torch.testing.assert_close(out[2], logits[2] / 2.0)


def test_choose_tokens_takes_argmax_for_greedy_rows_and_draws_from_softmax_otherwise():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    rows = 20000
    processed = probs.log().expand(rows, 4)
    greedy = torch.zeros(rows, dtype=torch.bool)
    greedy[:10] = True
    tokens = choose_tokens(processed, greedy, torch.Generator().manual_seed(0))
    assert (tokens[:10] == 3).all()
    frequencies = torch.bincount(tokens[10:], minlength=4).float() / (rows - 10)
    torch.testing.assert_close(frequencies, probs, rtol=0, atol=0.015)


def test_resolve_fills_defaults_and_merges_eos_into_stop_ids():
    spec = resolve_sampling_params({"stop_token_ids": [3]}, prompt_len=10, defaults=DEFAULTS, request_id="r")
    assert (spec.temperature, spec.top_k, spec.top_p) == (1.0, 0, 1.0)
    assert spec.max_tokens == 16 and spec.stop_token_ids == (3, 7, 9) and not spec.return_log_probs
    ignoring = resolve_sampling_params(
        {"stop_token_ids": [3], "ignore_eos": True, "logprobs": True}, prompt_len=10, defaults=DEFAULTS, request_id="r"
    )
    assert ignoring.stop_token_ids == (3,) and ignoring.return_log_probs
    assert resolve_sampling_params({"temperature": 0}, 10, DEFAULTS, "r").greedy


@pytest.mark.parametrize(
    ("params", "prompt_len", "expected"),
    [
        ({}, 40, 8),  # prompt_length + response_length - prompt_len
        ({"max_tokens": 5}, 10, 5),
        ({"max_new_tokens": 5}, 10, 5),
        ({"max_tokens": 100}, 60, 4),  # clamped to max_model_len - prompt_len
        ({"max_tokens": 0}, 10, 1),
    ],
)
def test_max_tokens_default_and_clamp(params, prompt_len, expected):
    assert resolve_sampling_params(params, prompt_len, DEFAULTS, "r").max_tokens == expected


@pytest.mark.parametrize(
    ("params", "prompt_len", "message"),
    [
        ({"best_of": 2}, 10, "best_of"),
        ({"n": 2}, 10, "n=2"),
        ({"repetition_penalty": 1.1}, 10, "repetition_penalty=1.1"),
        ({"top_p": 0.0}, 10, "top_p=0.0"),
        ({"temperature": -1}, 10, "temperature=-1"),
        ({"top_k": -2}, 10, "top_k=-2"),
        ({}, 64, "max_model_len=64"),
    ],
)
def test_bad_parameters_are_named_with_the_request(params, prompt_len, message):
    with pytest.raises(ValueError, match=message) as error:
        resolve_sampling_params(params, prompt_len, DEFAULTS, "req-17")
    assert "req-17" in str(error.value)
