"""CREDIT through verl's own ``main_ppo`` with the actor and ref on verl's Megatron engine at TP=2 (2 Ray workers
over gloo, CPU platform; the ``hf_cpu`` rollout takes its weights from the Megatron engine): rollout -> reward with
feedback -> old log-probs -> teacher pass -> CREDIT advantages -> Megatron actor update -> EMA teacher update,
shard by shard. The run checkpoints at step 1 through megatron-core's distributed-checkpoint writer
(``megatron_checkpoint_on_cpu``), is killed during step 2, and resumes from step 1: verl reloads the actor and
optimizer, the plugin reloads the saved EMA teacher into the Megatron ref, and step 2 runs from there. Then SDPO and
CREDIT at logit level on the same workers."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from demo_runs import DEMO, assert_logit_level_trained, run_demo
from safetensors.torch import load_file

from credit_plugin.dev.cpu import megatron

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(not megatron.available(), reason="needs credit_plugin[megatron-cpu]"),
]

SAVED, STEPS, TAU = 1, 2, 0.05
TP = ("--megatron-tp", "2")
OVERRIDES = (
    f"trainer.save_freq={SAVED}",
    # hf_model: the actor's full weights, to check the teacher's EMA rule after the resume
    "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
    "actor_rollout_ref.actor.checkpoint.load_contents=[model,optimizer,extra]",
    f"credit.teacher_update_rate={TAU}",
)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files in ``folder``, by Hugging Face name."""
    weights = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update({name: tensor.double() for name, tensor in load_file(path).items()})
    assert weights, f"no weights in {folder}"
    return weights


def _hf_model_path(step: Path) -> str:
    """Where verl's Megatron checkpoint keeps the actor's Hugging Face weights, as its manifest says."""
    manifest = json.loads((step / "actor/ckpt_contents.json").read_text())
    return manifest["contents"]["hf_model"]["path"]


def _run_until_killed(root: Path, assets: Path) -> None:
    """Start the run for :data:`STEPS` steps and SIGKILL its whole process group (demo script, main_ppo; Ray's
    processes share main_ppo's fate) once step :data:`SAVED`'s checkpoint is complete and its metrics logged."""
    command = [sys.executable, str(DEMO), "--steps", str(STEPS), "--run-dir", str(root), "--assets", str(assets)]
    latest = root / "credit/checkpoints/latest_checkpointed_iteration.txt"
    metrics = root / "credit/metrics.jsonl"
    with open(root / "killed_run.log", "w") as log:
        process = subprocess.Popen(
            [*command, *TP, "--", *OVERRIDES], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 1500
        while process.poll() is None and time.monotonic() < deadline:
            saved = latest.exists() and latest.read_text().strip() == str(SAVED)
            if saved and metrics.exists() and metrics.read_text().count("\n") >= SAVED:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return
            time.sleep(0.5)
        if process.poll() is None:  # past the deadline
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    tail = (root / "killed_run.log").read_text()[-3000:]
    pytest.fail(f"the run ended (code {process.returncode}) before step {SAVED}'s checkpoint:\n{tail}")


def test_credit_on_megatron_at_tp2_saves_is_killed_and_resumes_with_its_ema_teacher(tmp_path, tiny_cpu_assets):
    _run_until_killed(tmp_path, tiny_cpu_assets)
    checkpoints = tmp_path / "credit/checkpoints"
    assert not (checkpoints / f"global_step_{STEPS}").exists(), "the run was killed before its last step's save"
    records = run_demo(tmp_path, tiny_cpu_assets, *OVERRIDES, steps=STEPS, options=TP)
    lines = (tmp_path / "credit/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1)), "history kept on resume"
    for record in records:
        assert 0 < record["credit/teacher/context_fraction"] <= 1
        assert abs(record["credit/baseline_mean"]) > 0  # the contrast variants were scored
        assert math.isfinite(record["actor/grad_norm"]) and record["actor/grad_norm"] > 0
        # The EMA teacher starts as the initial actor: its first step moves it only if the update moved the
        # actor's weights, so a positive change proves the Megatron optimizer step took effect.
        assert record["credit/teacher_ema_max_change"] > 0
    # The resumed step's teacher is (1 - tau) * the teacher saved at step 1 + tau * the resumed actor: the
    # restored EMA state is exactly what was saved (fp32 ref on CPU: no rounding on the way).
    saved = _weights(checkpoints / f"global_step_{SAVED}/teacher")
    actor = _weights(checkpoints / f"global_step_{STEPS}/actor" / _hf_model_path(checkpoints / f"global_step_{STEPS}"))
    teacher = _weights(checkpoints / f"global_step_{STEPS}/teacher")
    assert teacher.keys() == saved.keys() and teacher.keys() <= actor.keys()
    initial = _weights(tiny_cpu_assets / "model")
    misfit_saved = misfit_restarted = 0.0
    for name, value in teacher.items():
        expected = (1 - TAU) * saved[name] + TAU * actor[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-5, msg=name)
        misfit_saved = max(misfit_saved, float((value - expected).abs().max()))
        if name in initial:  # a teacher restarted from the model path instead of the saved one
            restarted = (1 - TAU) * initial[name] + TAU * actor[name]
            misfit_restarted = max(misfit_restarted, float((value - restarted).abs().max()))
    assert misfit_restarted > 10 * misfit_saved, (misfit_restarted, misfit_saved)


# SDPO and CREDIT at logit level through main_ppo on the same TP=2 Megatron workers (docs/method.md, "Logit
# level"): the top-k support taken across vocabulary shards (the student's in the old log-prob pass, or the
# teacher's own in the teacher pass), the teacher's log-probs gathered at those ids for the original prompt and each
# CREDIT contrast variant, and the vocab-parallel distillation loss in the actor update. SDPO runs as verl's
# registered ``sdpo`` estimator with the current teacher and the teacher's top-k; CREDIT with the trust-region
# teacher, whose top-k comes from the mixed shards (the EMA and frozen teachers' logit level at TP=2:
# tests/integration/test_megatron_teacher.py).
LOGIT_STEPS = 2
LOGIT_LEVEL = ("credit.granularity=logit", "credit.topk=16", "credit.is_clip=2.0")
SDPO_CURRENT = ("algorithm.adv_estimator=sdpo", "credit.teacher=current", "credit.topk_source=teacher")
CREDIT_TRUST_REGION = (
    "credit.contrast_coef=0.5",
    "credit.num_negatives=2",
    "credit.teacher=trust_region",
    "credit.teacher_update_rate=0.5",
)


@pytest.mark.parametrize("algorithm", [SDPO_CURRENT, CREDIT_TRUST_REGION], ids=["sdpo", "credit"])
def test_sdpo_and_credit_at_logit_level_on_megatron_at_tp2(tmp_path, tiny_cpu_assets, algorithm):
    records = run_demo(tmp_path, tiny_cpu_assets, *LOGIT_LEVEL, *algorithm, steps=LOGIT_STEPS, options=TP)
    assert len(records) == LOGIT_STEPS
    assert_logit_level_trained(records)
    for record in records:
        if algorithm is CREDIT_TRUST_REGION:
            assert abs(record["credit/baseline_mean"]) > 0, "the contrast variants were scored"
        else:
            assert "credit/baseline_mean" not in record, "SDPO scores no contrast variant"
        assert "credit/teacher_ema_max_change" not in record, "the current and trust-region teachers keep no EMA"
