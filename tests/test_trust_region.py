"""The trust-region teacher's logit mix (the worker path is covered in tests/integration)."""

from __future__ import annotations

import pytest
import torch

from credit_plugin.trust_region import trust_region_log_probs


def _logits(seed: int, positions: int = 7, vocab: int = 11) -> torch.Tensor:
    return torch.randn(positions, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def _label_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), -1).gather(-1, labels[:, None])[:, 0]


LABELS = torch.tensor([0, 3, 10, 5, 5, 1, 7])


@pytest.mark.parametrize("coef", [0.0, 0.05, 0.5, 1.0])
def test_log_probs_of_the_logit_mix(coef):
    frozen, current = _logits(0), _logits(1)
    got = trust_region_log_probs(frozen, current, LABELS, coef)
    want = _label_log_probs((1 - coef) * frozen.double() + coef * current.double(), LABELS)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_endpoints_are_the_frozen_and_the_current_teacher():
    frozen, current = _logits(2), _logits(3)
    torch.testing.assert_close(
        trust_region_log_probs(frozen, current, LABELS, 0.0).double(),
        _label_log_probs(frozen, LABELS),
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(
        trust_region_log_probs(frozen, current, LABELS, 1.0).double(),
        _label_log_probs(current, LABELS),
        atol=1e-5,
        rtol=0,
    )


def test_the_mix_is_of_logits_not_of_probabilities():
    frozen, current = _logits(4), _logits(5)
    got = trust_region_log_probs(frozen, current, LABELS, 0.5).double()
    probability_mix = torch.log(
        0.5 * _label_log_probs(frozen, LABELS).exp() + 0.5 * _label_log_probs(current, LABELS).exp()
    )
    assert (got - probability_mix).abs().max() > 1e-2


def test_chunking_does_not_change_the_result():
    frozen, current = _logits(6, positions=9), _logits(7, positions=9)
    labels = torch.arange(9) % 11
    whole = trust_region_log_probs(frozen, current, labels, 0.3, chunk_tokens=100)
    torch.testing.assert_close(trust_region_log_probs(frozen, current, labels, 0.3, chunk_tokens=2), whole)


def test_low_precision_logits_are_mixed_in_float32():
    frozen, current = _logits(8), _logits(9)
    got = trust_region_log_probs(frozen.bfloat16(), current.bfloat16(), LABELS, 0.3)
    want = _label_log_probs(torch.lerp(frozen.bfloat16().float(), current.bfloat16().float(), 0.3), LABELS)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("frozen", "current", "labels", "coef", "message"),
    [
        (_logits(0), _logits(1, positions=6), LABELS, 0.1, "do the actor and ref engines share"),
        (_logits(0), _logits(1), LABELS[:3], 0.1, r"labels \(N,\)"),
        (_logits(0), _logits(1), LABELS, 1.5, "credit.teacher_update_rate"),
        (_logits(0), _logits(1), LABELS, -0.1, "credit.teacher_update_rate"),
    ],
)
def test_bad_input_is_named(frozen, current, labels, coef, message):
    with pytest.raises(ValueError, match=message):
        trust_region_log_probs(frozen, current, labels, coef)


def test_a_custom_label_log_prob_function_sees_the_float32_mix_in_chunks():
    """The hook Megatron's vocab-parallel cross-entropy enters by: called once per chunk with the mix."""
    frozen, current = _logits(0), _logits(1)
    seen = []

    def log_probs_of(mixed: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seen.append((mixed.dtype, tuple(mixed.shape), labels.tolist()))
        return torch.log_softmax(mixed, -1).gather(-1, labels[:, None])[:, 0]

    got = trust_region_log_probs(frozen.bfloat16(), current.bfloat16(), LABELS, 0.5, 3, log_probs_of)
    assert seen == [
        (torch.float32, (3, 11), [0, 3, 10]),
        (torch.float32, (3, 11), [5, 5, 1]),
        (torch.float32, (1, 11), [7]),
    ]
    torch.testing.assert_close(got, trust_region_log_probs(frozen.bfloat16(), current.bfloat16(), LABELS, 0.5))


def test_the_megatron_hook_matches_verls_logits_processor():
    """The Megatron path wraps verl's private ``_lm_head_logits_processor``: its parameters are checked against
    the installed verl, and an engine without them is refused by name."""
    pytest.importorskip("megatron.core")
    from verl.workers.engine.megatron.transformer_impl import MegatronEngineWithLMHead

    from credit_plugin.trust_region_engines import MEGATRON_LOGITS_PROCESSOR, MegatronTrustRegion

    engine = object.__new__(MegatronEngineWithLMHead)
    hook = MegatronTrustRegion(engine, frozen_logits=lambda data: data, coef=0.5)
    with hook:
        assert getattr(engine, MEGATRON_LOGITS_PROCESSOR) == hook._processor
    assert getattr(engine, MEGATRON_LOGITS_PROCESSOR).__func__ is MegatronEngineWithLMHead._lm_head_logits_processor

    class Renamed:
        def _lm_head_logits_processor(self, logits, labels, temperature, **kwargs):
            """A verl whose processor takes ``labels``."""

    with pytest.raises(NotImplementedError, match=r"_lm_head_logits_processor.*lacks \['distillation_only', 'label'"):
        MegatronTrustRegion(Renamed(), frozen_logits=lambda data: data, coef=0.5)
