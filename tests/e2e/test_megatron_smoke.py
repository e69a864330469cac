"""Two CREDIT steps through verl's own ``main_ppo`` with the actor and ref on verl's Megatron engine at TP=2
(2 Ray workers over gloo, CPU platform; the ``hf_cpu`` rollout takes its weights from the Megatron engine):
rollout -> reward with feedback -> old log-probs -> teacher pass -> CREDIT advantages -> Megatron actor
update -> EMA teacher update, shard by shard."""

from __future__ import annotations

import math

import pytest
from demo_runs import run_demo

from credit_plugin.dev.cpu import megatron

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(not megatron.available(), reason="needs credit_plugin[megatron-cpu]"),
]

STEPS = 2


def test_two_credit_steps_train_a_megatron_actor_at_tp2(tmp_path, tiny_cpu_assets):
    records = run_demo(tmp_path, tiny_cpu_assets, steps=STEPS, options=("--megatron-tp", "2"))
    assert len(records) == STEPS
    for record in records:
        assert 0 < record["credit/teacher/context_fraction"] <= 1
        assert abs(record["credit/baseline_mean"]) > 0  # the contrast variants were scored
        assert math.isfinite(record["actor/grad_norm"]) and record["actor/grad_norm"] > 0
        # The EMA teacher starts as the initial actor: its first step moves it only if the update moved the
        # actor's weights, so a positive change proves the Megatron optimizer step took effect.
        assert record["credit/teacher_ema_max_change"] > 0
