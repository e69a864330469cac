"""CI smoke: 2 steps of the CREDIT recipe through verl's own ``main_ppo`` on CPU, end to end.

rollout (hf_cpu) -> reward with feedback -> old log-probs -> teacher pass -> CREDIT advantages -> actor
update -> EMA teacher update -> metrics. Checks the metrics were written, the actor's weights moved, and
the teacher followed ``teacher_k = (1 - tau) * teacher_{k-1} + tau * actor_k`` from the initial model.
Dynamic batch size is off for actor, rollout and ref in these runs (fixed micro-batch sizes, as most of
verl's own recipes set them: the teacher pass pads its rows to data-parallel size times micro-batch size),
for every teacher kind; the EMA run is then resumed for one more step with the recipe's dynamic batch size,
which reloads the saved teacher and keeps the metrics history.
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
# teacher pass's 2 * 32 rows, so the frozen and ema runs send padding rows.
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


def test_the_trust_region_teacher_runs_the_loop_with_fixed_micro_batch_sizes(tmp_path, tiny_cpu_assets):
    """The EMA teacher runs above; ``frozen`` and ``current`` run at logit level below, so that every teacher kind
    goes through main_ppo without one more run each."""
    records = _demo(
        tmp_path, tiny_cpu_assets, *FIXED_MICRO_BATCHES, "credit.teacher=trust_region", "credit.teacher_update_rate=0.5"
    )
    assert len(records) == STEPS
    assert all(record["actor/grad_norm"] > 0 and abs(record["credit/baseline_mean"]) > 0 for record in records)
    assert all(0 < record["credit/teacher/context_fraction"] <= 1 for record in records)
    assert not any("credit/teacher_ema_max_change" in record for record in records)


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


# SDPO as published and CREDIT on the same logit-level loss (docs/method.md, "Logit level"), 2 steps each, with
# the two teacher kinds the token-level runs above leave out (the EMA teacher's logit level: tests/integration).
LOGIT_LEVEL = ("credit.granularity=logit", "credit.topk=16", "credit.is_clip=2.0")


@pytest.mark.slow
@pytest.mark.parametrize(
    "algorithm",
    [
        ["algorithm.adv_estimator=sdpo", "credit.teacher=frozen"],
        ["credit.contrast_coef=0.5", "credit.num_negatives=2", "credit.teacher=current"],
    ],
)
def test_logit_level_sdpo_and_credit_run_the_loop(tmp_path, tiny_cpu_assets, algorithm):
    records = _demo(tmp_path, tiny_cpu_assets, *FIXED_MICRO_BATCHES, *LOGIT_LEVEL, *algorithm)
    assert len(records) == STEPS
    for record in records:
        assert record["actor/grad_norm"] > 0
        assert record["actor/credit/logit/divergence"] > 0, "the logit-level loss trained the actor"
        assert 0 < record["credit/logit/teacher_topk_mass"] < 1
        assert 0 <= record["actor/credit/logit/tail_clamp_fraction"] <= 1
        assert 0 < record["credit/teacher/context_fraction"] <= 1
        assert "credit/teacher_ema_max_change" not in record, "frozen and current teachers do not move"
    assert all(("credit/baseline_mean" in record) == ("credit.contrast_coef=0.5" in algorithm) for record in records)
