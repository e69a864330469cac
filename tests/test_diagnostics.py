"""The collapse signals: advantage statistics over scored tokens and the drift warning."""

from __future__ import annotations

import pytest
import torch

from credit_plugin.diagnostics import AdvantageDriftWatch, token_advantage_stats


def test_stats_cover_only_scored_tokens():
    advantages = torch.tensor([[2.0, -1.0, 100.0], [0.5, 0.0, -100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    stats = token_advantage_stats(advantages, mask)
    assert stats["credit/advantage/token_mean"] == 0.375
    assert stats["credit/advantage/positive_fraction"] == 0.5
    assert stats["credit/advantage/token_abs_mean"] == 0.875
    assert token_advantage_stats(advantages, torch.zeros_like(mask)) == {}


def test_drift_warning_needs_consecutive_steps_and_resets():
    watch = AdvantageDriftWatch(nats=1.0, steps=3)
    assert watch.update(2.5, 1) is None
    assert watch.update(-3.0, 2) is None
    warning = watch.update(2.9, 3)
    assert warning is not None and "+2.90 nats" in warning and "3 steps up to step 3" in warning
    assert "credit.contrast_coef" in warning
    assert watch.update(0.2, 4) is None
    assert watch.update(2.0, 5) is None and watch.update(None, 6) is None and watch.streak == 0


def test_generic_share_is_one_when_every_prompt_earns_the_credit_and_zero_when_none_does():
    from credit_plugin.diagnostics import generic_credit_stats
    from credit_plugin.rewards import credit_token_rewards

    teacher, student = torch.tensor([[-0.5, -1.0, -3.0, -9.0]]), torch.tensor([[-2.0, -1.5, -2.0, -9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # the swapped-prompt teacher scores as the real one (or higher): all of SDPO's credit is generic
    same = generic_credit_stats(teacher, teacher, student, teacher - student, mask)
    assert same["credit/generic_share"] == pytest.approx(1.0)
    assert generic_credit_stats(teacher, teacher + 3, student, teacher - student, mask)["credit/generic_share"] == 1.0
    # the swapped-prompt teacher finds every token far less likely: none of it is, however much less likely
    none = generic_credit_stats(teacher, teacher - 40, student, teacher - student, mask)
    assert none["credit/generic_share"] == pytest.approx(0.0, abs=1e-12)
    # half the teacher's probability survives the swap on the first token, all on the second, none on the third:
    # weighted by |T - S| = (1.5, 0.5, 1.0); the masked 4th token (far off) must not count
    baseline = teacher + torch.log(torch.tensor([[0.5, 1.0, 1e-30, 1e30]]))
    rewards = credit_token_rewards(teacher, baseline[:, None], student, mask, contrast_coef=0.25)
    stats = generic_credit_stats(teacher, baseline, student, rewards, mask)
    assert stats["credit/generic_share"] == pytest.approx((1.5 * 0.5 + 0.5 * 1.0) / 3.0)
    assert -1.0 <= stats["credit/advantage_correlation"] < 1.0


def test_advantage_correlation_is_one_for_a_rescaling_and_absent_for_a_constant():
    from credit_plugin.diagnostics import generic_credit_stats
    from credit_plugin.rewards import credit_token_rewards

    teacher = torch.tensor([[0.0, -1.0, -2.0]])
    student = torch.full((1, 3), -1.0)
    mask = torch.ones(1, 3)
    # the swapped-prompt teacher scores as the real one: CREDIT at lambda 0.5 pays half of SDPO's reward
    rewards = credit_token_rewards(teacher, teacher[:, None], student, mask, contrast_coef=0.5)
    stats = generic_credit_stats(teacher, teacher, student, rewards, mask)
    assert stats["credit/advantage_correlation"] == pytest.approx(1.0)
    # at lambda 1 it pays nothing: a constant, no correlation, and no NaN
    rewards = credit_token_rewards(teacher, teacher[:, None], student, mask, contrast_coef=1.0)
    assert torch.equal(rewards, torch.zeros(1, 3))
    assert "credit/advantage_correlation" not in generic_credit_stats(teacher, teacher, student, rewards, mask)
    # a swapped-prompt teacher twice as far from the student as the real one: CREDIT at lambda 1 reverses SDPO
    flipped = student + 2 * (teacher - student)
    rewards = credit_token_rewards(teacher, flipped[:, None], student, mask, contrast_coef=1.0)
    stats = generic_credit_stats(teacher, flipped, student, rewards, mask)
    assert stats["credit/advantage_correlation"] == pytest.approx(-1.0)
    assert generic_credit_stats(teacher, flipped, student, rewards, torch.zeros(1, 3)) == {}
