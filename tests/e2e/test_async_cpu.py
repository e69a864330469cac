"""CI: 2 steps of CREDIT under verl's ``colocate_async`` trainer (``trainer.v1.trainer_mode=credit_colocate_async``)
through ``main_ppo`` on CPU, end to end.

verl's own asynchronous machinery runs unchanged: a warm-up batch generated ahead of training, the replicas
aborted when a batch is sampled and resumed under the new weights after the update (partial rollouts), the
async replay buffer, and the TransferQueue saved with the checkpoint. CREDIT's steps run inside: the teacher
pass, the CREDIT advantages, the EMA step and the teacher checkpoint. The second step trains on responses
generated (at least partly) before the first update, scored as docs/method.md ("Asynchronous trainers") states.
"""

from __future__ import annotations

from functools import partial

import pytest
from demo_runs import run_demo

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

STEPS = 2
_demo = partial(run_demo, steps=STEPS)


def test_credit_runs_under_colocate_async(tmp_path, tiny_cpu_assets):
    records = _demo(
        tmp_path,
        tiny_cpu_assets,
        "trainer.v1.trainer_mode=credit_colocate_async",
        "trainer.v1.colocate_async.num_warmup_batches=1",
        f"trainer.save_freq={STEPS}",
    )
    assert len(records) == STEPS
    for record in records:
        assert record["actor/grad_norm"] > 0
        assert 0 < record["credit/teacher/context_fraction"] <= 1
        assert abs(record["credit/baseline_mean"]) > 0, "the contrast variants were scored"
        assert record["credit/teacher_ema_max_change"] > 0, "the EMA teacher moved after the update"
    first, second = records
    # step 2 trains on the warm-up batch, begun under the initial weights (version 0) before the first update
    assert second["training/off_policy/trajectory_staleness_worst/max"] >= 1
    # step 1: the EMA teacher is still the initial model and the actor has not moved, so a plain (context-free)
    # teacher row reproduces old_log_probs; step 2: the teacher (EMA) and the student (actor) differ
    # the student is old_log_probs, recomputed on the actor: at step 2 it differs from the log-probs the rollout
    # recorded under version 0 (at step 1 both are the initial weights)
    assert first["training/rollout_probs_diff_max"] < 1e-4 < second["training/rollout_probs_diff_max"]
    if "credit/teacher_sanity_gap" in first:
        assert first["credit/teacher_sanity_gap"] < 1e-3
    step = tmp_path / f"credit/checkpoints/global_step_{STEPS}"
    assert (step / "teacher").is_dir(), "the EMA teacher is saved with the step"
    assert (step / "transfer_queue").is_dir(), "verl's async checkpoint keeps the in-flight groups"
