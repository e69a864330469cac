"""``credit.granularity=logit`` through verl's own hybrid worker on CPU (FSDP, the tiny Qwen2 with the real
vocabulary), on a real batch stored in TransferQueue: the old log-prob pass records the student's top-k, the
teacher pass fills the target, and the actor update's loss is ``credit_plugin.distill`` on the same logits."""

from __future__ import annotations

import dataclasses

import pytest
import ray
import torch
import transfer_queue as tq
from conftest import label_log_probs, load_model, response_logits
from safetensors.torch import save_file
from test_credit_trainer import _store_batch

from credit_plugin import distill
from credit_plugin.config import CreditConfig
from credit_plugin.dev.cpu.workers import compose_cpu_config, create_worker_groups, ray_init_kwargs
from credit_plugin.diagnostics import AdvantageDriftWatch
from credit_plugin.logit_engines import DISTILL_MASK, STUDENT_TOPK, TARGET_TOPK, TOPK_IDS, unflat_rows
from credit_plugin.teacher_scoring import TEACHER_PASS_FIELDS
from credit_plugin.trainer import CreditTrainer
from credit_plugin.workers import CreditActorRolloutRefWorker

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOPK, ALPHA, IS_CLIP, LAMBDA, K = 8, 0.5, 2.0, 0.5, 2


@pytest.fixture(scope="module")
def stack(tiny_model_dir):
    config = compose_cpu_config(
        str(tiny_model_dir),
        config_name="credit_trainer",
        overrides=[
            "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
            "actor_rollout_ref.rollout.name=hf_cpu",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            "actor_rollout_ref.rollout.calculate_log_probs=false",
            "actor_rollout_ref.rollout.temperature=1.0",
            "actor_rollout_ref.rollout.n=2",
            "actor_rollout_ref.actor.ppo_mini_batch_size=3",
            "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
            "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=256",
            "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true",
            "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=256",
            "credit.granularity=logit",
            f"credit.topk={TOPK}",
            f"credit.alpha={ALPHA}",
            f"credit.is_clip={IS_CLIP}",
            f"credit.contrast_coef={LAMBDA}",
            f"credit.num_negatives={K}",
            "credit.teacher=frozen",
        ],
    )
    ray.init(**{**ray_init_kwargs(1), "num_cpus": 16})
    config.transfer_queue.enable = True
    tq.init(config.transfer_queue)
    groups = create_worker_groups(config, roles=("actor_rollout_ref",), worker_cls=CreditActorRolloutRefWorker)
    yield config, groups["actor_rollout_ref"]
    tq.close()
    ray.shutdown()


def _trainer(config, worker_group, tokenizer) -> CreditTrainer:
    trainer = CreditTrainer.__new__(CreditTrainer)
    trainer.config = config
    trainer.credit = CreditConfig.from_dict(config.credit)
    trainer.tokenizer = tokenizer
    trainer.actor_rollout_wg = worker_group
    trainer.ref_policy_wg = worker_group
    trainer.global_steps = 1
    trainer.timing_raw = {}
    trainer.advantage_watch = AdvantageDriftWatch()
    return trainer


@pytest.mark.parametrize(
    ("teacher", "topk_source"),
    [("current", "student"), ("ema", "student"), ("trust_region", "student"), ("current", "teacher")],
)
def test_every_teacher_scores_the_support_in_one_call(stack, tiny_model_dir, tokenizer, teacher, topk_source):
    """Before any update every teacher's weights are the student's, so at lambda 0 (SDPO) the target on a sample
    with a teacher context is that model's log-probs under the sample's reprompt, at the ids (the student's top-k,
    or with ``topk_source=teacher`` the teacher's own top-k under the reprompt). Samples without a context are not
    scored (one plain row for the sanity metric) and get no target."""
    config, worker_group = stack
    trainer = _trainer(config, worker_group, tokenizer)
    trainer.credit = dataclasses.replace(trainer.credit, teacher=teacher, topk_source=topk_source, contrast_coef=0.0)
    batch = _store_batch(tokenizer, prefix=f"{teacher}-{topk_source}-")
    calls = []
    original = worker_group.compute_teacher_topk

    def counted(data):
        calls.append(len(data))
        return original(data)

    metrics: dict = {}
    batch = trainer._compute_old_log_prob(batch, metrics)
    # the same teacher batch the trainer builds (SDPO: no negatives, so nothing random in it)
    scorer = trainer._teacher_scorer()
    data = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=list(TEACHER_PASS_FIELDS))
    teacher_batch = scorer.teacher_batch(data, len(batch), tokenizer, trainer.global_steps, scorer.engine())
    worker_group.compute_teacher_topk = counted
    try:
        batch = trainer._compute_advantage(batch, metrics)
    finally:
        worker_group.compute_teacher_topk = original
    assert calls == [teacher_batch.num_rows], "one worker call for the teacher pass (the scored rows and padding)"
    assert teacher_batch.num_rows - teacher_batch.num_padding_rows < 2 * len(batch)  # no-context samples skipped
    fields = [TOPK_IDS, TARGET_TOPK, DISTILL_MASK, "prompts", "responses"]
    stored = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=fields)
    ids, target = unflat_rows(stored[TOPK_IDS], TOPK), unflat_rows(stored[TARGET_TOPK], TOPK)
    context = [mask.sum() > 0 for mask in stored[DISTILL_MASK].unbind(0)]
    assert sum(not c for c in context) == 3 and any(context)
    model = load_model(tiny_model_dir)
    for row, has_context in enumerate(context):
        if not has_context:
            assert not target[row].any(), f"row {row}: a sample without a context has no target"
            continue
        response = stored["responses"][row].tolist()
        sequence = teacher_batch.data["input_ids"][int(teacher_batch.row_index[0, row])].tolist()
        log_probs = torch.log_softmax(response_logits(model, sequence[: -len(response)], response), -1)
        got = log_probs.gather(-1, ids[row])
        torch.testing.assert_close(target[row].double(), got, rtol=0, atol=1e-4, msg=f"{teacher}, row {row}")
        # the support: the teacher's own top-k under the reprompt, or the student's under the rollout prompt
        if topk_source == "student":
            log_probs = torch.log_softmax(response_logits(model, stored["prompts"][row].tolist(), response), -1)
        chosen = log_probs.gather(-1, ids[row])
        outside = log_probs.scatter(-1, ids[row], float("-inf")).max(-1).values
        assert torch.all(chosen.min(-1).values >= outside - 1e-5), f"row {row}: not the {topk_source}'s top-{TOPK}"
    assert metrics["credit/teacher_sanity_gap"] < 1e-4


def test_logit_level_step_records_the_students_top_k_and_trains_on_distills_loss(
    stack, tiny_model_dir, tokenizer, tmp_path
):
    config, worker_group = stack
    trainer = _trainer(config, worker_group, tokenizer)
    # a frozen teacher clearly unlike the student (its weights times 1.3): divergences far above float noise
    model = load_model(tiny_model_dir)
    with torch.no_grad():
        scaled = {name: value.clone() * 1.3 for name, value in model.state_dict().items()}
    save_file(scaled, tmp_path / "model.safetensors")
    worker_group.load_teacher(str(tmp_path))
    batch = _store_batch(tokenizer, prefix="logit-")
    metrics: dict = {}
    batch = trainer._compute_old_log_prob(batch, metrics)
    batch = trainer._compute_advantage(batch, metrics)
    fields = ["prompts", "responses", "old_log_probs", "advantages", TOPK_IDS, STUDENT_TOPK, TARGET_TOPK, DISTILL_MASK]
    stored = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=fields)

    ids_rows, student_rows = unflat_rows(stored[TOPK_IDS], TOPK), unflat_rows(stored[STUDENT_TOPK], TOPK)
    target_rows, mask_rows = unflat_rows(stored[TARGET_TOPK], TOPK), list(stored[DISTILL_MASK].unbind(0))
    expected_losses, tokens = [], 0
    for row in range(len(batch)):
        prompt, response = stored["prompts"][row].tolist(), stored["responses"][row].tolist()
        logits = response_logits(model, prompt, response)  # (R, V), the initial weights = the old policy
        ids = ids_rows[row]
        # the old pass kept the student's own top-k, with full-vocabulary log-probs
        log_probs = torch.log_softmax(logits, -1)
        torch.testing.assert_close(student_rows[row].double(), log_probs.gather(-1, ids), rtol=0, atol=1e-4)
        kth = log_probs.gather(-1, ids).min(-1).values
        outside = log_probs.scatter(-1, ids, float("-inf")).max(-1).values
        assert torch.all(kth >= outside - 1e-5), f"row {row}: the recorded ids are not the student's top-{TOPK}"
        old = stored["old_log_probs"][row].double()
        per_token = distill.per_token_distillation_loss(
            logits[None],
            target_rows[row].double()[None],
            mask_rows[row][None],
            topk=TOPK,
            add_tail=True,
            alpha=ALPHA,
            is_clip=IS_CLIP,
            log_prob=label_log_probs(logits, response)[None],
            old_log_prob=old[None],
            topk_indices=ids[None],
        )
        expected_losses.append(per_token.sum())
        tokens += len(response)
    assert torch.all(stored["advantages"].values() == 0), "no advantage at logit level: the loss is the update"
    print({key: value for key, value in metrics.items() if key.startswith("credit/")})
    assert 0 < metrics["credit/logit/teacher_topk_mass"] < 1
    assert 0 <= metrics["credit/logit/target_tail_clamp_fraction"] <= 1
    expected = float(sum(expected_losses)) / tokens * metrics["credit/loss_scale"]
    assert expected > 1e-3

    update_metrics: dict = {}
    trainer._update_actor(batch, update_metrics)
    print({key: value for key, value in update_metrics.items() if "credit" in key or "loss" in key})
    assert update_metrics["actor/credit/logit/loss"] == pytest.approx(expected, rel=1e-4)
    assert update_metrics["actor/grad_norm"] > 0
    assert 0 < update_metrics["actor/credit/logit/target_topk_mass"] < 1
    assert update_metrics["actor/credit/logit/divergence"] > 0
    assert 0 <= update_metrics["actor/credit/logit/tail_clamp_fraction"] <= 1
