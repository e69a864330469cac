"""The CREDIT trainer refuses configurations it cannot serve, naming the option, before any worker starts."""

from __future__ import annotations

import hashlib
import inspect
import os
import re

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from verl.protocol import DataProto
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.utils.losses import ppo_loss

from credit_plugin.config import CONFIG_DIR, CreditConfig
from credit_plugin.teacher import build_teacher_batch
from credit_plugin.trainer import (
    UPSTREAM_COMPUTE_ADVANTAGE_SHA256,
    CreditTrainer,
    check_ema_ref_dtype,
    check_mirrored_upstream,
    check_one_output_per_session,
    check_start_up,
    context_loss_scale,
    credit_options,
)
from credit_plugin.workers import CreditActorRolloutRefWorker, ShardedSafetensorsWriter, has_teacher_weights


def test_upstream_compute_advantage_is_the_one_the_trainer_mirrors():
    source = inspect.getsource(PPOTrainer._compute_advantage)
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_COMPUTE_ADVANTAGE_SHA256, (
        "verl's PPOTrainer._compute_advantage changed: re-read CreditTrainer._compute_advantage against it"
    )


def _config(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="credit_trainer", overrides=list(overrides))


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["algorithm.adv_estimator=grpo"], ValueError, "needs algorithm.adv_estimator in"),
        (
            ["credit.granularity=logit", "actor_rollout_ref.model.use_fused_kernels=true"],
            ValueError,
            "granularity=logit does not support actor_rollout_ref.model.use_fused_kernels=true",
        ),
        (
            [
                "credit.granularity=logit",
                "model_engine=megatron",
                "actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=2",
            ],
            ValueError,
            "granularity=logit does not support actor_rollout_ref.actor.megatron.pipeline_model_parallel_size > 1",
        ),
        (
            [
                "credit.granularity=logit",
                "model_engine=megatron",
                "actor_rollout_ref.actor.megatron.context_parallel_size=2",
            ],
            ValueError,
            "granularity=logit does not support actor_rollout_ref.actor.megatron.context_parallel_size > 1",
        ),
        (
            ["credit.granularity=logit", "algorithm.use_kl_in_reward=true"],
            ValueError,
            "granularity=logit does not support algorithm.use_kl_in_reward=true",
        ),
        (
            # the sync trainer too (the async modes: tests/test_async_trainers.py)
            ["credit.granularity=logit", "algorithm.rollout_correction.rollout_is=token"],
            ValueError,
            "does not support algorithm.rollout_correction.rollout_is=token",
        ),
        (
            ["credit.granularity=logit", "actor_rollout_ref.actor.loss_agg_mode=token-sum"],
            ValueError,
            "loss_agg_mode=token-sum",
        ),
        (["+credit.num_negativs=2"], ValueError, "did you mean credit.num_negatives"),
    ],
)
def test_unsupported_settings_fail_at_construction(overrides, error, message):
    with pytest.raises(error, match=message):
        CreditTrainer(_config(*overrides))


def _worker_mapping(*overrides: str) -> CreditTrainer:
    trainer = CreditTrainer.__new__(CreditTrainer)
    trainer.config = _config(*overrides)
    # as CreditTrainer.__init__: the config-only start-up checks, then verl's worker mapping
    trainer.credit = check_start_up(trainer.config)
    trainer._init_resource_pool_mgr()
    return trainer


@pytest.mark.parametrize("teacher", ["ema", "frozen", "trust_region"])
def test_ref_teachers_get_a_ref_engine_in_the_credit_worker(teacher):
    trainer = _worker_mapping(f"credit.teacher={teacher}")
    assert list(trainer.role_worker_mapping) == [Role.ActorRolloutRef]
    assert trainer.mapping[Role.ActorRolloutRef] == "global_pool"
    assert trainer.role_worker_mapping[Role.ActorRolloutRef].__ray_actor_class__ is CreditActorRolloutRefWorker


def test_current_teacher_needs_no_ref_engine():
    trainer = _worker_mapping("credit.teacher=current")
    assert list(trainer.role_worker_mapping) == [Role.ActorRollout]


@pytest.mark.parametrize("teacher", ["frozen", "trust_region"])
def test_with_lora_the_frozen_model_is_the_actor_without_its_adapter(teacher):
    trainer = _worker_mapping(f"credit.teacher={teacher}", "actor_rollout_ref.model.lora_rank=8")
    assert list(trainer.role_worker_mapping) == [Role.ActorRollout], "verl's ref_in_actor: no second model"
    assert trainer.role_worker_mapping[Role.ActorRollout].__ray_actor_class__ is CreditActorRolloutRefWorker


def test_lora_with_the_ema_teacher_is_a_clear_error():
    with pytest.raises(ValueError, match="credit.teacher=ema with LoRA"):
        _worker_mapping("credit.teacher=ema", "actor_rollout_ref.model.lora_rank=8")


@pytest.mark.parametrize("teacher", ["ema", "trust_region"])
def test_hybrid_teachers_without_the_hybrid_engine_are_a_clear_error(teacher, monkeypatch):
    monkeypatch.setattr(CreditTrainer, "_enable_hybrid_replicas", False, raising=False)
    with pytest.raises(ValueError, match=f"credit.teacher={teacher} needs the actor and ref engines in one worker"):
        _worker_mapping(f"credit.teacher={teacher}")


def test_frozen_teacher_without_the_hybrid_engine_needs_verls_ref_worker(monkeypatch):
    monkeypatch.setattr(CreditTrainer, "_enable_hybrid_replicas", False, raising=False)
    with pytest.raises(ValueError, match="use_kl_loss=true with actor_rollout_ref.actor.kl_loss_coef=0"):
        _worker_mapping("credit.teacher=frozen")
    trainer = _worker_mapping("credit.teacher=frozen", "actor_rollout_ref.actor.use_kl_loss=true")
    assert set(trainer.role_worker_mapping) == {Role.Actor, Role.RefPolicy}


def test_config_keeps_what_the_user_set_while_the_trainer_runs_sync():
    config = _config()
    trainer = CreditTrainer(config)
    assert config.trainer.v1.trainer_mode == "credit", "the logged and saved config shows the user's setting"
    assert trainer.trainer_mode == "sync"
    assert type(trainer.replay_buffer) is ReplayBuffer, "sync semantics: not verl's async replay buffer"


def test_sdpo_estimator_checks_its_options_without_the_contrast():
    """``adv_estimator=sdpo`` runs no contrast, so an option refused only alongside a contrast (the teacher's top-k
    at logit level) is SDPO's to use with ``credit.contrast_coef`` left at CREDIT's default; under ``credit`` the
    same options are refused, naming the option."""
    logit = ("credit.granularity=logit", "credit.topk_source=teacher")
    options = credit_options(_config("algorithm.adv_estimator=sdpo", *logit))
    assert options.topk_source == "teacher" and options.contrast_coef == 0 and options.is_sdpo
    with pytest.raises(ValueError, match="credit.topk_source=teacher with credit.contrast_coef > 0"):
        credit_options(_config(*logit))


def test_sdpo_estimator_scores_one_variant_per_sample_even_with_one_prompt_group(tokenizer):
    options = credit_options(_config("algorithm.adv_estimator=sdpo", "credit.contrast_coef=1.0"))
    assert options.contrast_coef == 0 and options.is_sdpo
    assert credit_options(_config("credit.contrast_coef=0.5")).contrast_coef == 0.5
    # one prompt group: CREDIT could draw no negative, SDPO needs none
    response = torch.tensor(tokenizer.encode("Answer: 5"))
    batch = build_teacher_batch(
        raw_prompt=[[{"role": "user", "content": "What is 2 + 3?"}]] * 2,
        responses=[response, response],
        response_mask=[torch.ones_like(response)] * 2,
        uid=np.array(["a", "a"], dtype=object),
        scores=[1.0, 0.0],
        feedback=None,
        tokenizer=tokenizer,
        config=options,
    )
    assert batch.num_negatives == 0 and batch.num_rows == 2


@pytest.mark.parametrize("aggregate", ["mean", "logmeanexp"])
def test_teacher_metrics_are_finite_and_the_contrast_gap_follows_the_aggregate(aggregate):
    gen = torch.Generator().manual_seed(0)
    response_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    teacher = -torch.rand(3, 3, generator=gen)
    contrast = -torch.rand(3, 2, 3, generator=gen) * 2
    old = -torch.rand(3, 3, generator=gen)
    teacher[0, 2] = contrast[1, :, 1] = old[1, 2] = -float("inf")  # masked positions
    data = DataProto.from_dict(
        tensors={
            "response_mask": response_mask,
            "teacher_log_probs": teacher,
            "contrast_log_probs": contrast,
            "old_log_probs": old,
            "self_distillation_mask": torch.tensor([1.0, 1.0, 0.0]),
        }
    )
    trainer = CreditTrainer.__new__(CreditTrainer)
    trainer.credit = CreditConfig(negative_aggregate=aggregate)
    metrics = {}
    trainer._teacher_metrics(data, torch.tensor([True, True, True]), metrics)
    assert all(np.isfinite(value) for value in metrics.values()), metrics
    finite = torch.where(response_mask.bool()[:, None], contrast, 0.0)
    baseline = finite.mean(1) if aggregate == "mean" else finite.logsumexp(1) - np.log(2)
    gap = (torch.where(response_mask.bool(), teacher - baseline, 0.0)).sum(-1)[:2].mean()
    assert metrics["credit/contrast_gap_mean"] == pytest.approx(gap.item(), abs=1e-6)


def _nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def _verl_pg_loss(advantages: torch.Tensor, response_mask: torch.Tensor, delta: torch.Tensor, agg: str) -> float:
    """verl's actor loss (``losses.ppo_loss``) on one mini-batch, with the token count its engine computes
    from ``loss_mask`` (the response mask, as verl's agent loop stores it)."""
    config = _config(f"actor_rollout_ref.actor.loss_agg_mode={agg}", "actor_rollout_ref.actor.use_dynamic_bsz=true")
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    lengths = response_mask.sum(-1).long().tolist()
    gen = torch.Generator().manual_seed(3)
    old = -torch.rand(response_mask.shape, generator=gen)
    rows = range(len(lengths))
    data = tu.get_tensordict(
        {
            "prompts": _nested([torch.ones(2, dtype=torch.long)] * len(lengths)),
            "responses": _nested([torch.ones(n, dtype=torch.long) for n in lengths]),
            "response_mask": _nested([torch.ones(n, dtype=torch.long) for n in lengths]),
            "old_log_probs": _nested([old[i, : lengths[i]] for i in rows]),
            "advantages": _nested([advantages[i, : lengths[i]] for i in rows]),
        },
        non_tensor_dict={"dp_size": 1, "batch_num_tokens": int(response_mask.sum()), "global_batch_size": len(lengths)},
    )
    # model output over prompt ++ response: position p predicts token p + 1
    log_probs = [
        torch.cat([torch.zeros(1), old[i, : lengths[i]] + delta[i, : lengths[i]], torch.zeros(1)]) for i in rows
    ]
    loss, metrics = ppo_loss(actor, {"log_probs": _nested(log_probs)}, data)
    return float(loss)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_distillation_loss_averages_over_samples_with_context_as_sdpo(agg):
    response_mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    context = torch.tensor([1.0, 0.0, 1.0, 0.0])
    gen = torch.Generator().manual_seed(0)
    advantages = torch.randn(response_mask.shape, generator=gen) * response_mask * context[:, None]
    delta = torch.randn(response_mask.shape, generator=gen) * 0.05  # ratios inside PPO's clip
    per_token = -advantages * delta.exp()
    kept = response_mask * context[:, None]
    if agg == "token-mean":  # SDPO: mean over the tokens of samples with a teacher context
        sdpo = (per_token * kept).sum() / kept.sum()
    else:
        sdpo = ((per_token * kept).sum(-1) / response_mask.sum(-1))[context.bool()].mean()
    scale = context_loss_scale(response_mask, context, agg)
    assert scale > 1
    assert _verl_pg_loss(advantages * scale, response_mask, delta, agg) == pytest.approx(sdpo.item(), rel=1e-5)
    assert _verl_pg_loss(advantages, response_mask, delta, agg) != pytest.approx(sdpo.item(), rel=1e-3)


def test_loss_scale_only_without_outcome_mix():
    b = {
        "response_mask": torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
        "self_distillation_mask": torch.tensor([1.0, 0.0, 0.0]),
        "advantages": torch.ones(3, 2),
        "returns": torch.ones(3, 2),
    }
    for mix, expected in ((0.0, 5 / 2), (0.3, 1.0)):
        trainer = CreditTrainer.__new__(CreditTrainer)
        trainer.config, trainer.credit = _config(), CreditConfig(outcome_mix=mix)
        data = DataProto.from_dict(tensors={key: value.clone() for key, value in b.items()})
        metrics = {}
        trainer._scale_to_context_mean(data, torch.tensor([True, True, True]), metrics)
        # with a mix, the GRPO term acts on every sample: verl's denominator (all response tokens) stays
        assert metrics["credit/loss_scale"] == pytest.approx(expected)
        torch.testing.assert_close(data.batch["advantages"], torch.full((3, 2), expected))
    # padding rows (verl's balance padding) do not count
    assert context_loss_scale(b["response_mask"][:1], b["self_distillation_mask"][:1], "token-mean") == 1.0
    assert context_loss_scale(b["response_mask"], b["self_distillation_mask"], "token-sum") == 1.0


def test_ema_teacher_with_bf16_ref_storage_is_refused_at_start():
    with pytest.raises(ValueError, match="credit.teacher=ema needs the ref engine's weights in fp32"):
        _worker_mapping("credit.teacher=ema", "actor_rollout_ref.ref.fsdp_config.model_dtype=bf16")
    _worker_mapping("credit.teacher=frozen", "actor_rollout_ref.ref.fsdp_config.model_dtype=bf16")


def test_ema_teacher_on_a_bf16_megatron_ref_passes_the_start_up_check():
    """verl's Megatron ref is bf16 on GPUs (its McoreEngineConfig refuses fp32): the worker keeps the EMA state
    in fp32 itself, so the start-up check must not refuse it (nor read the FSDP section there)."""
    config = _config("model_engine=megatron", "credit.teacher=ema")
    assert config.actor_rollout_ref.ref.strategy == "megatron"
    assert config.actor_rollout_ref.ref.megatron.dtype == "bfloat16"
    check_ema_ref_dtype(config.actor_rollout_ref)
    assert check_start_up(config).teacher == "ema"
    trainer = CreditTrainer.__new__(CreditTrainer)
    trainer.config, trainer.credit = config, CreditConfig.from_dict(config.credit)
    trainer._init_resource_pool_mgr()


def test_mirrored_compute_advantage_is_checked_at_start(monkeypatch):
    check_mirrored_upstream()

    def _compute_advantage(self, batch, metrics):  # another verl build's body
        return batch

    monkeypatch.setattr(PPOTrainer, "_compute_advantage", _compute_advantage)
    message = r"mirrors verl 0\.9\.1's PPOTrainer._compute_advantage.*install verl==0\.9\.1"
    with pytest.raises(RuntimeError, match=message):
        check_mirrored_upstream()
    with pytest.raises(RuntimeError, match="PPOTrainer._compute_advantage"):
        CreditTrainer(_config())


@pytest.mark.parametrize("version", ["0.9.0", "0.9.2", "0.9.1.post1", "0.10.0"])
def test_patches_accept_only_the_verified_verl_release(monkeypatch, version):
    import verl

    from credit_plugin.patches import SUPPORTED_VERL, compute_advantage_batch_inputs, require_verl

    assert SUPPORTED_VERL == ("0.9.1",)
    require_verl("p", "0.9.1")
    monkeypatch.setattr(verl, "__version__", version)
    message = rf"targets verl 0\.9\.1 only .*found verl {re.escape(version)}; install verl==0\.9\.1"
    with pytest.raises(RuntimeError, match=message):
        compute_advantage_batch_inputs.apply()


class _CheckpointWorkers:
    """The two worker-group calls of a checkpoint, writing what the workers write; ``kill_in`` raises
    ``SystemExit`` inside that call at the given step (a kill mid-save)."""

    def __init__(self, kill_in: str | None = None, kill_step: int | None = None):
        self.kill_in, self.kill_step, self.loaded = kill_in, kill_step, []

    def _maybe_kill(self, call: str, path: str) -> None:
        if call == self.kill_in and f"global_step_{self.kill_step}" in path:
            raise SystemExit(f"killed during {call}")

    def save_checkpoint(self, local_path, remote_path, global_step, max_ckpt_to_keep=None):
        os.makedirs(local_path, exist_ok=True)
        self._maybe_kill("save_checkpoint", local_path)

    def save_teacher(self, local_path):
        writer = ShardedSafetensorsWriter(local_path)
        writer.add("w", torch.ones(2))
        self._maybe_kill("save_teacher", local_path)
        writer.close()

    def load_checkpoint(self, local_path, del_local_after_load=False):
        self.loaded.append(local_path)

    def load_teacher(self, local_path):
        self.loaded.append(local_path)


def _checkpointing_trainer(tmp_path, workers, *overrides):
    trainer = CreditTrainer.__new__(CreditTrainer)
    trainer.config = _config(f"trainer.default_local_dir={tmp_path}", *overrides)
    trainer.credit = CreditConfig.from_dict(trainer.config.credit)
    trainer.actor_rollout_wg, trainer.use_critic = workers, False

    class _Loader:
        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    class _Callback:
        def on_save(self, **kwargs):
            pass

    trainer.train_dataloader, trainer.checkpoint_callback = _Loader(), _Callback()
    return trainer


@pytest.mark.parametrize("kill_in", ["save_teacher", "save_checkpoint"])
def test_a_kill_during_the_checkpoint_resumes_from_the_last_complete_step(tmp_path, kill_in):
    """verl marks a step complete (latest_checkpointed_iteration.txt) at the end of its save: the EMA teacher is
    written before, and old teachers are rotated only after it, so a kill anywhere in between resumes from the
    previous step with its teacher."""
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

    workers = _CheckpointWorkers(kill_in=kill_in, kill_step=2)
    trainer = _checkpointing_trainer(tmp_path, workers, "trainer.max_actor_ckpt_to_keep=1")
    trainer.global_steps = 1
    trainer._save_checkpoint()
    trainer.global_steps = 2
    with pytest.raises(SystemExit):
        trainer._save_checkpoint()
    latest = find_latest_ckpt_path(str(tmp_path))
    assert latest is not None and latest.endswith("global_step_1")
    assert has_teacher_weights(os.path.join(latest, "teacher")), "the complete step keeps its teacher"

    resumed = _checkpointing_trainer(tmp_path, _CheckpointWorkers(), "trainer.resume_mode=auto")
    resumed._load_checkpoint()
    assert resumed.global_steps == 1
    assert resumed.actor_rollout_wg.loaded == [os.path.join(latest, "actor"), os.path.join(latest, "teacher")]
    # step 2 again after the resume: the killed save's leftovers do not mix into the new teacher
    resumed.global_steps = 2
    resumed._save_checkpoint()
    assert sorted(path.name for path in (tmp_path / "global_step_2/teacher").iterdir()) == ["model.safetensors"]
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "2"


def test_teacher_folders_rotate_after_the_step_is_marked_complete(tmp_path):
    trainer = _checkpointing_trainer(tmp_path, _CheckpointWorkers(), "trainer.max_actor_ckpt_to_keep=1")
    for step in (1, 2):
        trainer.global_steps = step
        trainer._save_checkpoint()
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert sorted(p.parent.name for p in tmp_path.glob("global_step_*/teacher")) == ["global_step_2"]


def test_agent_loops_with_several_outputs_per_session_are_refused():
    check_one_output_per_session(["u1_0_0", "u1_1_0", "u2_0_0", "pad-uid_3_0"])
    with pytest.raises(ValueError, match=r"one output per agent-loop session; sessions \{'u1_1': 2\}"):
        check_one_output_per_session(["u1_0_0", "u1_1_0", "u1_1_1", "u2_0_0"])


class _DispatchInfo:
    """The dispatch bookkeeping of a verl worker group with ``dp`` data-parallel ranks on every mesh."""

    def __init__(self, dp: int):
        self._dispatch_info = {}
        self.dp = dp

    def _query_dispatch_info(self, mesh: str) -> list[int]:
        return list(range(self.dp))

    def compute_ref_log_prob(self, data):
        raise AssertionError("not called")


def test_teacher_rows_pad_to_dp_times_micro_batch_and_a_missing_size_is_named():
    trainer = CreditTrainer.__new__(CreditTrainer)
    trainer.config = _config(
        "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=false",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=5",
    )
    trainer.credit = CreditConfig(teacher="frozen")
    trainer.actor_rollout_wg = trainer.ref_policy_wg = _DispatchInfo(dp=2)
    assert trainer._teacher_scorer().row_multiple() == 10
    trainer.config.actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu = None
    with pytest.raises(ValueError, match="needs log_prob_micro_batch_size_per_gpu or log_prob_use_dynamic_bsz=true"):
        trainer._teacher_scorer().row_multiple()
