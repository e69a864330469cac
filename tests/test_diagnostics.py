"""The collapse signals: advantage statistics over scored tokens and the drift warning."""

from __future__ import annotations

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
