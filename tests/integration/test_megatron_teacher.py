"""The CREDIT teacher pass on verl's hybrid Megatron worker at TP=2 (2 Ray workers over gloo, CPU platform),
against the formula rebuilt with plain transformers, and against the same worker at TP=1 (2 data-parallel
ranks); the EMA teacher's update, save and reload, and the trust-region mix, through the Megatron workers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import transfer_queue as tq
from conftest import label_log_probs, load_model, random_tiny_qwen2, response_logits
from safetensors.torch import load_file, save_file
from test_credit_trainer import (
    SAMPLES,
    TEACHER_ROWS,
    K,
    _assert_rows_close,
    _chat,
    _expected_advantages,
    _run_compute_advantage,
    _store_batch,
)
from test_credit_trainer import _trainer as _fsdp_trainer
from verl.workers.utils.padding import response_from_nested

from credit_plugin import distill
from credit_plugin.dev.cpu import megatron
from credit_plugin.dev.cpu.workers import (
    build_log_prob_batch,
    compose_cpu_config,
    create_worker_groups,
    ray_init_kwargs,
)
from credit_plugin.logit_engines import DISTILL_MASK, STUDENT_TOPK, TARGET_TOPK, TOPK_IDS, unflat_rows
from credit_plugin.teacher_scoring import TEACHER_PASS_FIELDS
from credit_plugin.workers import CreditActorRolloutRefWorker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.skipif(not megatron.available(), reason="needs credit_plugin[megatron-cpu]"),
]

# Megatron splits the vocabulary over TP ranks: a real Qwen2.5 vocabulary size, divisible by 2 (the
# tokenizer's own 151669 tokens all fit below it).
VOCAB = 151936
RATE = 0.25  # EMA rate, far from both ends so that a wrong update shows
WORLD = 2
LOGIT_TOPK = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("tiny_qwen2_megatron")
    random_tiny_qwen2(VOCAB).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _config(model_dir, tp: int):
    config = compose_cpu_config(
        str(model_dir),
        world_size=WORLD,
        config_name="credit_trainer",
        engine="megatron",
        overrides=[
            f"actor_rollout_ref.actor.megatron.tensor_model_parallel_size={tp}",
            # verl's LR scheduler asserts a positive number of decay steps.
            "actor_rollout_ref.actor.optim.total_training_steps=2",
            "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
            "actor_rollout_ref.rollout.name=hf_cpu",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            # the logit-level test updates the actor on its 6 samples in one mini-batch (data-parallel size 1), so
            # that the whole update's loss is taken at the initial weights
            "actor_rollout_ref.actor.ppo_mini_batch_size=6",
            "actor_rollout_ref.rollout.calculate_log_probs=false",
            "actor_rollout_ref.rollout.temperature=1.0",
            "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
            "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=256",
            "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true",
            "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=256",
            f"credit.num_negatives={K}",
            "credit.negative_seed=11",
            f"credit.teacher_update_rate={RATE}",
        ],
    )
    config.transfer_queue.enable = True
    return config


@pytest.fixture(scope="module")
def stack(model_dir):
    """Ray, TransferQueue and two hybrid ``actor_rollout_ref`` Megatron worker groups of 2 processes each:
    TP=2 (one data-parallel rank) and TP=1 (two data-parallel ranks)."""
    ray.init(**{**ray_init_kwargs(2 * WORLD), "num_cpus": 16})
    configs = {tp: _config(model_dir, tp) for tp in (2, 1)}
    tq.init(configs[2].transfer_queue)
    groups = {
        tp: create_worker_groups(
            config, roles=("actor_rollout_ref",), worker_cls=CreditActorRolloutRefWorker, pool_name=f"tp{tp}_pool"
        )["actor_rollout_ref"]
        for tp, config in configs.items()
    }
    yield configs, groups
    tq.close()
    ray.shutdown()


def _trainer(config, worker_group, tokenizer, teacher: str):
    trainer = _fsdp_trainer(config, worker_group, tokenizer, teacher)
    trainer._check_megatron(config.actor_rollout_ref)
    return trainer


def _scaled_checkpoint(model, factor: float, folder: Path) -> dict[str, torch.Tensor]:
    """``model``'s weights times ``factor``, written to ``folder`` as a Hugging Face folder (as ``save_teacher``
    writes one, for ``load_teacher``); returns them."""
    with torch.no_grad():
        weights = {name: tensor.clone() * factor for name, tensor in model.state_dict().items()}
    folder.mkdir()
    save_file(weights, folder / "model.safetensors")
    model.config.save_pretrained(folder)
    return weights


def _advantages(stack, tokenizer, tp: int, teacher: str, prefix: str):
    configs, groups = stack
    trainer = _trainer(configs[tp], groups[tp], tokenizer, teacher)
    method = "compute_log_prob" if teacher == "current" else "compute_ref_log_prob"
    return _run_compute_advantage(trainer, groups[tp], (method,), prefix=prefix)


@pytest.mark.parametrize("teacher", ["current", "frozen"])
def test_teacher_pass_at_tp2_equals_the_credit_formula_and_tp1(stack, model_dir, tokenizer, teacher):
    advantages, metrics, calls = _advantages(stack, tokenizer, 2, teacher, prefix=f"mcore-{teacher}-")
    (method,) = calls
    assert calls[method] == [TEACHER_ROWS], "all 1+K variants of every sample with a context in one worker call"
    uids = np.array([f"mcore-{teacher}-{group}" for group, *_ in SAMPLES], dtype=object)
    trainer = _trainer(stack[0][2], stack[1][2], tokenizer, teacher)
    expected = _expected_advantages(model_dir, tokenizer, trainer.credit, uids)
    _assert_rows_close(advantages, expected, metrics["credit/loss_scale"])
    assert metrics["credit/teacher_sanity_gap"] < 1e-4

    # The same batch on two data-parallel ranks of TP=1: rows padded to a multiple of the DP size.
    tp1, _, tp1_calls = _advantages(stack, tokenizer, 1, teacher, prefix=f"tp1-{teacher}-")
    assert all(rows % WORLD == 0 for sizes in tp1_calls.values() for rows in sizes)
    for row, (got, want) in enumerate(zip(advantages, tp1, strict=True)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4, msg=f"sample {row}: TP=2 vs TP=1")


def test_ema_teacher_follows_the_actor_shard_by_shard(stack, model_dir, tokenizer, tmp_path):
    """Ref loaded with other weights, one EMA step towards the actor at TP=2, then the teacher pass: equals the
    formula with a transformers teacher holding ``lerp(ref, actor, rate)``; the same at TP=1."""
    configs, groups = stack
    actor = load_model(model_dir)
    start = _scaled_checkpoint(actor, 1.3, tmp_path / "start")
    teacher = load_model(model_dir)
    teacher.load_state_dict(
        {name: torch.lerp(start[name], weight, RATE) for name, weight in actor.state_dict().items()}
    )
    uids = np.array([f"tp2-ema-{group}" for group, *_ in SAMPLES], dtype=object)
    expected = _expected_advantages(
        model_dir,
        tokenizer,
        _trainer(configs[2], groups[2], tokenizer, "ema").credit,
        uids,
        lambda prompt, response: response_logits(teacher, prompt, response),
    )
    results = {}
    for tp in (2, 1):
        groups[tp].load_teacher(str(tmp_path / "start"))
        try:
            changes = groups[tp].update_teacher_ema(RATE)
            assert max(changes) > 0
            results[tp], metrics, _ = _advantages(stack, tokenizer, tp, "ema", prefix=f"tp{tp}-ema-")
        finally:
            groups[tp].load_teacher(str(model_dir))
        _assert_rows_close(results[tp], expected, metrics["credit/loss_scale"])
        # Plain rows show the teacher's drift from the actor: the EMA teacher is not the actor.
        assert metrics["credit/teacher_sanity_gap"] > 1e-3
    for got, want in zip(results[2], results[1], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_trust_region_teacher_mixes_vocabulary_shards_at_tp2(stack, model_dir, tokenizer, tmp_path):
    """``trust_region`` on Megatron: each TP rank mixes its vocabulary shard of the frozen (ref) model's logits
    and the actor's inside the actor's log-prob pass; equals the formula with transformers' full-vocabulary
    mix ``lerp(z_frozen, z_actor, tau)``, and the same at TP=1."""
    configs, groups = stack
    actor = load_model(model_dir)
    frozen_weights = _scaled_checkpoint(actor, 1.3, tmp_path / "frozen")
    frozen = load_model(model_dir)
    frozen.load_state_dict(frozen_weights)

    def mixed(prompt, response):
        return torch.lerp(response_logits(frozen, prompt, response), response_logits(actor, prompt, response), RATE)

    uids = np.array([f"tp2-trust-{group}" for group, *_ in SAMPLES], dtype=object)
    trainer = _trainer(configs[2], groups[2], tokenizer, "trust_region")
    expected = _expected_advantages(model_dir, tokenizer, trainer.credit, uids, mixed)
    method = "compute_trust_region_log_prob"
    results = {}
    for tp in (2, 1):
        trainer = _trainer(configs[tp], groups[tp], tokenizer, "trust_region")
        groups[tp].load_teacher(str(tmp_path / "frozen"))
        try:
            run = _run_compute_advantage(trainer, groups[tp], (method,), prefix=f"tp{tp}-trust-")
            results[tp], metrics, calls = run
        finally:
            groups[tp].load_teacher(str(model_dir))
        assert len(calls[method]) == 1, "all 1+K variants of every sample in one worker call"
        _assert_rows_close(results[tp], expected, metrics["credit/loss_scale"])
        # Plain rows show the mixed teacher's drift from the actor: the frozen model took part.
        assert metrics["credit/teacher_sanity_gap"] > 1e-3
    for got, want in zip(results[2], results[1], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_ema_teacher_saves_and_reloads_through_the_tp2_workers(stack, model_dir, tokenizer, tmp_path):
    """Resume: the teacher's full weights leave the TP=2 shards as a Hugging Face checkpoint and load back."""
    _, groups = stack
    ref = groups[2]
    ref.save_teacher(str(tmp_path / "saved"))
    saved = load_file(tmp_path / "saved/model.safetensors")
    model = load_model(model_dir)
    state = model.state_dict()
    # lm_head is tied to the embedding: exported once or twice, as the bridge chooses.
    assert set(state) - {"lm_head.weight"} <= set(saved) <= set(state)
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=0, msg=name)

    moved = _scaled_checkpoint(model, 1.5, tmp_path / "moved")
    model.load_state_dict(moved)
    prompt, response = _chat(tokenizer, "What is 2 + 3?"), tokenizer.encode(" Answer: 5")
    batch = build_log_prob_batch([prompt], [response])
    try:
        ref.load_teacher(str(tmp_path / "moved"))
        out = ref.compute_ref_log_prob(batch)
        ref.save_teacher(str(tmp_path / "resaved"))
    finally:
        ref.load_teacher(str(tmp_path / "saved"))
    got = response_from_nested(out["log_probs"], batch["response_mask"])[0]
    want = label_log_probs(response_logits(model, prompt, response), response)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)
    resaved = load_file(tmp_path / "resaved/model.safetensors")
    for name, tensor in resaved.items():
        torch.testing.assert_close(tensor, moved[name], rtol=0, atol=0, msg=name)


def _logit_step(trainer, prefix: str):
    """A stored batch through the old log-prob pass and the teacher pass at logit level; returns the batch, the step's
    metrics and the teacher batch the trainer builds (SDPO: no negatives, so nothing random in it)."""
    batch = _store_batch(trainer.tokenizer, prefix=prefix)
    metrics: dict = {}
    batch = trainer._compute_old_log_prob(batch, metrics)
    scorer = trainer._teacher_scorer()
    data = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=list(TEACHER_PASS_FIELDS))
    teacher_batch = scorer.teacher_batch(data, len(batch), trainer.tokenizer, trainer.global_steps, scorer.engine())
    return trainer._compute_advantage(batch, metrics), metrics, teacher_batch


def _logit_level_targets(stack, tokenizer, tp: int, teacher: str, topk_source: str, start: Path):
    """Old log-probs and the teacher pass at logit level (SDPO) on the TP=``tp`` group, its ref loaded from ``start``
    (then one EMA step for ``ema``); returns the stored rows and the teacher batch the trainer built."""
    configs, groups = stack
    trainer = _trainer(configs[tp], groups[tp], tokenizer, teacher)
    trainer.credit = dataclasses.replace(
        trainer.credit, granularity="logit", topk=LOGIT_TOPK, topk_source=topk_source, contrast_coef=0.0
    )
    groups[tp].load_teacher(str(start))
    try:
        if teacher == "ema":
            assert max(groups[tp].update_teacher_ema(RATE)) > 0
        batch, metrics, teacher_batch = _logit_step(trainer, prefix=f"tp{tp}-logit-{teacher}-")
    finally:
        groups[tp].load_teacher(str(configs[tp].actor_rollout_ref.model.path))
    assert metrics["credit/teacher_sanity_gap"] > 1e-3, "the teacher is not the student"
    fields = [TOPK_IDS, TARGET_TOPK, DISTILL_MASK, "prompts", "responses"]
    return tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=fields), teacher_batch


@pytest.mark.parametrize(("teacher", "topk_source"), [("ema", "student"), ("frozen", "teacher")])
def test_logit_level_scores_the_ema_and_frozen_teachers_on_either_support_at_tp2_and_tp1(
    stack, model_dir, tokenizer, tmp_path, teacher, topk_source
):
    """The ref-held teachers at logit level on the Megatron worker, with a teacher that differs from the student (the
    ref loaded with other weights, then one EMA step for ``ema``): the target on a sample with a teacher context
    is that teacher's full-vocabulary log-probs under the reprompt, at the student's top-k under the rollout prompt
    or (``topk_source=teacher``) at the teacher's own top-k under the reprompt, taken across the two vocabulary
    shards at TP=2 and over the whole vocabulary at TP=1 (two data-parallel ranks): the same ids and values."""
    actor = load_model(model_dir)
    start = _scaled_checkpoint(actor, 1.3, tmp_path / "start")
    model = load_model(model_dir)
    rate = RATE if teacher == "ema" else 0.0
    model.load_state_dict({name: torch.lerp(start[name], weight, rate) for name, weight in actor.state_dict().items()})
    rows = {}
    for tp in (2, 1):
        stored, teacher_batch = _logit_level_targets(stack, tokenizer, tp, teacher, topk_source, tmp_path / "start")
        ids_rows, target_rows = unflat_rows(stored[TOPK_IDS], LOGIT_TOPK), unflat_rows(stored[TARGET_TOPK], LOGIT_TOPK)
        scored = [row for row, mask in enumerate(stored[DISTILL_MASK].unbind(0)) if mask.sum() > 0]
        assert scored, "some samples have a teacher context"
        every_id = torch.cat([ids_rows[row].flatten() for row in scored])
        assert (every_id < VOCAB // 2).any() and (every_id >= VOCAB // 2).any(), "ids from both halves"
        for row in scored:
            response = stored["responses"][row].tolist()
            sequence = teacher_batch.data["input_ids"][int(teacher_batch.row_index[0, row])].tolist()
            reprompted = torch.log_softmax(response_logits(model, sequence[: -len(response)], response), -1)
            got, want = target_rows[row].double(), reprompted.gather(-1, ids_rows[row])
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4, msg=f"TP={tp}, row {row}")
            support = reprompted
            if topk_source == "student":
                support = torch.log_softmax(response_logits(actor, stored["prompts"][row].tolist(), response), -1)
            top = torch.topk(support, LOGIT_TOPK, -1).indices
            assert torch.equal(ids_rows[row], top), f"TP={tp}, row {row}: not the {topk_source}'s top-k"
        rows[tp] = scored, ids_rows, target_rows
    assert rows[2][0] == rows[1][0]
    for row in rows[2][0]:
        assert torch.equal(rows[2][1][row], rows[1][1][row]), f"row {row}: TP=2 vs TP=1 ids"
        torch.testing.assert_close(rows[2][2][row], rows[1][2][row], rtol=0, atol=1e-4, msg=f"row {row}")


def test_logit_level_at_tp2_records_top_k_scores_the_target_and_trains_on_distills_loss(stack, model_dir, tokenizer):
    """``credit.granularity=logit`` on the TP=2 Megatron worker (each rank holding its vocabulary shard): the old
    pass records the student's own top-k with full-vocabulary log-probs, the teacher pass (SDPO, the current
    teacher) gives the teacher's log-probs under the reprompt at those ids, and the update's loss is
    ``credit_plugin.distill`` on transformers' full-vocabulary logits, as the FSDP worker's
    (tests/integration/test_logit_level.py). Last in the module: it trains the TP=2 actor."""
    configs, groups = stack
    trainer = _trainer(configs[2], groups[2], tokenizer, "current")
    trainer.credit = dataclasses.replace(
        trainer.credit, granularity="logit", topk=LOGIT_TOPK, alpha=0.5, is_clip=2.0, contrast_coef=0.0
    )
    batch, metrics, teacher_batch = _logit_step(trainer, prefix="mcore-logit-")
    fields = ["prompts", "responses", "old_log_probs", TOPK_IDS, STUDENT_TOPK, TARGET_TOPK, DISTILL_MASK]
    stored = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=fields)
    ids_rows, student_rows = unflat_rows(stored[TOPK_IDS], LOGIT_TOPK), unflat_rows(stored[STUDENT_TOPK], LOGIT_TOPK)
    target_rows, mask_rows = unflat_rows(stored[TARGET_TOPK], LOGIT_TOPK), list(stored[DISTILL_MASK].unbind(0))

    every_id = torch.cat([ids.flatten() for ids in ids_rows])
    assert (every_id < VOCAB // 2).any() and (every_id >= VOCAB // 2).any(), "top-k ids from both TP shards"

    model = load_model(model_dir)
    expected, tokens = 0.0, 0
    for row in range(len(batch)):
        prompt, response = stored["prompts"][row].tolist(), stored["responses"][row].tolist()
        logits = response_logits(model, prompt, response)  # (R, V) float64, the actor's initial weights
        log_probs, ids = torch.log_softmax(logits, -1), ids_rows[row]
        # the student's own top-k across the two vocabulary shards, in order, with full-vocabulary log-probs
        assert torch.equal(ids, torch.topk(log_probs, LOGIT_TOPK, -1).indices), f"row {row}: not the top-k"
        torch.testing.assert_close(student_rows[row].double(), log_probs.gather(-1, ids), rtol=0, atol=1e-4)
        if mask_rows[row].sum() > 0:  # a teacher context: the target is the teacher under the reprompt at the ids
            sequence = teacher_batch.data["input_ids"][int(teacher_batch.row_index[0, row])].tolist()
            teacher = torch.log_softmax(response_logits(model, sequence[: -len(response)], response), -1)
            torch.testing.assert_close(target_rows[row].double(), teacher.gather(-1, ids), rtol=0, atol=1e-4)
        per_token = distill.per_token_distillation_loss(
            logits[None],
            target_rows[row].double()[None],
            mask_rows[row][None],
            topk=LOGIT_TOPK,
            add_tail=True,
            alpha=0.5,
            is_clip=2.0,
            log_prob=label_log_probs(logits, response)[None],
            old_log_prob=stored["old_log_probs"][row].double()[None],
            topk_indices=ids[None],
        )
        expected += float(per_token.sum())
        tokens += len(response)
    expected = expected / tokens * metrics["credit/loss_scale"]
    assert any(mask.sum() > 0 for mask in mask_rows) and expected > 0, "some tokens are distilled"

    update: dict = {}
    trainer._update_actor(batch, update)
    # the divergence is small here (about 1e-6: the current teacher is the actor), so fp32 rounding bounds it
    assert update["actor/credit/logit/loss"] == pytest.approx(expected, rel=1e-3, abs=1e-8)
    assert update["actor/grad_norm"] > 0
    assert 0 < update["actor/credit/logit/target_topk_mass"] < 1
    assert 0 < update["actor/credit/logit/support_overlap"] <= 1, "the support's movement, from the shards"
