"""CI smoke: 2 steps of the CREDIT recipe through verl's own ``main_ppo`` on CPU, end to end.

rollout (hf_cpu) -> reward with feedback -> old log-probs -> teacher pass -> CREDIT advantages -> actor
update -> EMA teacher update -> metrics. Checks the metrics were written, the actor's weights moved, and
the teacher followed ``teacher_k = (1 - tau) * teacher_{k-1} + tau * actor_k`` from the initial model.
Dynamic batch size is off for actor, rollout and ref in this run (fixed micro-batch sizes, as most of verl's
own recipes set them: the teacher pass pads its rows to data-parallel size times micro-batch size); the run is
then resumed for one more step with the recipe's dynamic batch size, which reloads the saved teacher and keeps
the metrics history. The other teachers and the logit level run end to end in the learning bench's quick modes
(tests/e2e/test_learn_quick.py) and on Megatron (tests/e2e/test_megatron_smoke.py).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from demo_runs import run_demo
from safetensors.torch import load_file

# the first run builds the tiny model and data (minutes on a busy machine), beyond pytest.ini's 600 s
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

STEPS, TAU = 2, 0.05
_demo = partial(run_demo, steps=STEPS)


# The rollout's size must divide verl's own old-log-prob batch (32 rows); the ref's 5 does not divide the
# teacher pass's 2 * 32 rows, so the EMA teacher's pass sends padding rows.
FIXED_MICRO_BATCHES = (
    "actor_rollout_ref.actor.use_dynamic_bsz=false",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=false",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=false",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=5",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_cpu_assets) -> Path:
    root = tmp_path_factory.mktemp("tiny_cpu_smoke")
    _demo(
        root,
        tiny_cpu_assets,
        *FIXED_MICRO_BATCHES,
        "trainer.save_freq=1",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,extra,hf_model]",
        f"credit.teacher_update_rate={TAU}",
    )
    return root


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """Full weights by HF name; a tied ``lm_head.weight`` that a checkpoint left out is the input embedding."""
    weights = {name: tensor.double() for name, tensor in load_file(path).items()}
    weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])
    return weights


def test_metrics_show_teacher_pass_baseline_and_update(run_dir):
    records = [json.loads(line)["data"] for line in (run_dir / "credit/metrics.jsonl").read_text().splitlines()]
    assert len(records) == STEPS
    for record in records:
        assert 0 < record["credit/teacher/context_fraction"] <= 1
        assert abs(record["credit/baseline_mean"]) > 0  # the contrast variants were scored
        assert {"credit/pmi_mean", "credit/contrast_gap_mean", "response_length/mean"} <= set(record)
        assert record["actor/grad_norm"] > 0
        assert record["credit/teacher_ema_max_change"] > 0


def test_token_records_and_the_credit_report_from_the_run(run_dir):
    """The recipe's ``credit.token_records: 4`` through main_ppo: 4 samples a step, CREDIT's reward of each
    token the default form's ``(T - S) - 0.25 * (g - S)``, and the report page built from the run folder."""
    from credit_plugin.report import write_report

    lines = (run_dir / "credit/token_records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [record["step"] for record in records] == [1] * 4 + [2] * 4
    for record in records:
        assert record["prompt"].startswith("user: Sort the digits:") and record["tokens"]
        assert len(record["tokens"]) == len(record["credit"]) == len(record["teacher_log_probs"])
        if not record["has_context"]:
            continue
        teacher, baseline, student = (
            torch.tensor(record[key]) for key in ("teacher_log_probs", "baseline_log_probs", "student_log_probs")
        )
        torch.testing.assert_close(torch.tensor(record["sdpo"]), teacher - student, rtol=0, atol=1e-4)
        expected = (teacher - student) - 0.25 * (baseline - student)
        torch.testing.assert_close(torch.tensor(record["credit"]), expected, rtol=0, atol=1e-4)
        assert record["feedback"] or record["solution"], "a sample with a teacher context saw feedback or a solution"
    assert any(record["has_context"] for record in records)
    metrics = [json.loads(line)["data"] for line in (run_dir / "credit/metrics.jsonl").read_text().splitlines()]
    assert all(-1 <= record["credit/advantage_correlation"] <= 1 for record in metrics)
    assert all("credit/generic_share" in record for record in metrics)
    page = write_report(run_dir / "credit").read_text()
    assert page.count('data-key="credit"') == sum(len(record["tokens"]) for record in records)
    assert page.count("<svg") >= 5


def test_actor_moved_and_teacher_followed_the_ema_rule(run_dir, tiny_cpu_assets):
    checkpoints = run_dir / "credit/checkpoints"
    teacher = _weights(tiny_cpu_assets / "model/model.safetensors")
    initial = dict(teacher)
    for step in range(1, STEPS + 1):
        actor = _weights(checkpoints / f"global_step_{step}/actor/huggingface/model.safetensors")
        saved = _weights(checkpoints / f"global_step_{step}/teacher/model.safetensors")
        assert saved.keys() <= actor.keys()
        moved = max(float((actor[name] - initial[name]).abs().max()) for name in saved)
        assert moved > 1e-4, f"the actor did not change by step {step}"
        for name, value in saved.items():
            expected = (1 - TAU) * teacher[name] + TAU * actor[name]
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-5, msg=f"step {step}, {name}")
        teacher = saved


def test_a_resumed_ema_run_keeps_its_history_and_continues_from_its_teacher(run_dir, tiny_cpu_assets):
    """Resume the EMA run above (checkpoints every step) for a third step, with dynamic batch size."""
    records = _demo(
        run_dir,
        tiny_cpu_assets,
        "trainer.save_freq=1",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,extra,hf_model]",
        f"credit.teacher_update_rate={TAU}",
        steps=STEPS + 1,
    )
    lines = (run_dir / "credit/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 2)), "history kept on resume"
    assert records[-1]["credit/teacher_ema_max_change"] > 0
    checkpoints = run_dir / "credit/checkpoints"
    previous = _weights(checkpoints / f"global_step_{STEPS}/teacher/model.safetensors")
    actor = _weights(checkpoints / f"global_step_{STEPS + 1}/actor/huggingface/model.safetensors")
    saved = _weights(checkpoints / f"global_step_{STEPS + 1}/teacher/model.safetensors")
    for name, value in saved.items():
        expected = (1 - TAU) * previous[name] + TAU * actor[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-5, msg=name)
