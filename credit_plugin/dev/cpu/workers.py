"""verl's own actor and reference workers (``ActorRolloutRefWorker`` over the FSDP2 engine) on a CPU machine.

The pieces the V1 trainer uses, put together the way ``PPOTrainer._init_resource_pool_mgr`` / ``_setup`` put
them (``verl/trainer/ppo/v1/trainer_base.py``): a ``ResourcePoolManager`` with one global pool, one
``RayClassWithInitArgs`` per role, the roles fused into one process per logical GPU by
``create_colocated_worker_cls`` and spawned as one ``RayWorkerGroup`` per role, then ``init_model``.

Requires the CPU platform in every process: ``VERL_PLATFORM=cpu`` and ``credit_plugin`` imported
(``ray_init_kwargs`` passes both to Ray's workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict

# Hydra overrides of verl's ``ppo_trainer`` config that the actor and ref workers need on CPU.
CPU_OVERRIDES: tuple[str, ...] = (
    "trainer.device=cpu",
    # FSDP1 (the default strategy) refuses CPU parameters with sync_module_states=True.
    "actor_rollout_ref.actor.strategy=fsdp2",
    # verl defaults to flash_attention_2; sdpa also separates the packed (remove-padding) sequences by
    # their position_ids.
    "++actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    # fp32 compute: the engine's default bf16 autocast runs on CPU but is slow on most CPUs and moves
    # log-probs by ~3e-2 against an fp32 forward (e.g. the rollout's).
    "++actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
    "++actor_rollout_ref.ref.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
    # The engine torch.compile's its entropy function: needs a C++ toolchain and costs seconds per shape.
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
    "actor_rollout_ref.ref.fsdp_config.use_torch_compile=false",
)


def ray_init_kwargs(world_size: int) -> dict[str, Any]:
    """Keyword arguments for ``ray.init`` that fit ``world_size`` worker processes on this machine.

    Each process holds one logical ``"GPU"`` and ``ResourcePoolManager.max_colocate_count`` (3) logical CPUs
    (Ray's counts are bookkeeping, not cores). The env vars select the CPU platform in every worker and import
    the plugin loudly there (the ``verl.plugins`` entry point swallows import errors).
    """
    return {
        "num_cpus": 3 * world_size + 1,
        "num_gpus": world_size,
        "include_dashboard": False,
        "runtime_env": {"env_vars": {"VERL_PLATFORM": "cpu", "VERL_USE_EXTERNAL_MODULES": "credit_plugin"}},
    }


def compose_cpu_config(
    model_path: str,
    world_size: int = 1,
    max_token_len_per_gpu: int = 2048,
    overrides: Sequence[str] = (),
    config_name: str = "ppo_trainer",
    engine: str = "fsdp",
) -> DictConfig:
    """verl's ``ppo_trainer`` config with :data:`CPU_OVERRIDES`, the model and the world size, resolved.

    ``config_name="credit_trainer"`` composes the plugin's config (``credit_plugin.CONFIG_DIR``) instead.
    ``engine="megatron"`` selects verl's Megatron engine with
    :data:`credit_plugin.dev.cpu.megatron.MEGATRON_CPU_OVERRIDES` instead of the FSDP2 ones (parallel sizes go in
    ``overrides``, e.g. ``actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2``).

    Log-prob micro-batches are packed by token count (dynamic batch size) up to ``max_token_len_per_gpu``
    tokens, so any batch size works; keep it small on CPU: the logits of a micro-batch take
    ``tokens * vocab * 4`` bytes. ``overrides`` come last and win.
    """
    from hydra import compose, initialize_config_dir, initialize_config_module

    from credit_plugin.config import CONFIG_DIR
    from credit_plugin.dev.cpu.megatron import MEGATRON_CPU_OVERRIDES

    engine_overrides = {"fsdp": CPU_OVERRIDES, "megatron": MEGATRON_CPU_OVERRIDES}
    if engine not in engine_overrides:
        raise ValueError(f"engine must be one of {sorted(engine_overrides)}, got {engine!r}")
    context = (
        initialize_config_module(config_module="verl.trainer.config", version_base=None)
        if config_name == "ppo_trainer"
        else initialize_config_dir(config_dir=CONFIG_DIR, version_base=None)
    )
    with context:
        config = compose(
            config_name=config_name,
            overrides=[
                *engine_overrides[engine],
                f"actor_rollout_ref.model.path={model_path}",
                "trainer.nnodes=1",
                f"trainer.n_gpus_per_node={world_size}",
                "actor_rollout_ref.actor.use_dynamic_bsz=true",
                f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={max_token_len_per_gpu}",
                *overrides,
            ],
        )
    OmegaConf.resolve(config)
    return config


def create_worker_groups(
    config: DictConfig,
    roles: Sequence[str] = ("actor", "ref"),
    worker_cls: type | None = None,
    pool_name: str = "global_pool",
) -> dict[str, Any]:
    """Spawn verl's ``ActorRolloutRefWorker`` for each role in the same processes and initialise its models.

    Args:
        config: a full trainer config (e.g. from :func:`compose_cpu_config`); the world size is
            ``trainer.nnodes * trainer.n_gpus_per_node``.
        roles: ``"actor"`` and/or ``"ref"`` (the V1 trainer's ``Role.Actor`` / ``Role.RefPolicy``); roles with a
            rollout need a registered rollout backend.
        worker_cls: a subclass of verl's ``ActorRolloutRefWorker`` to spawn instead of it.
        pool_name: the resource pool's name; Ray's placement groups are named after it and the world size,
            so two groups of the same size in one cluster need different names.

    Returns:
        ``{role: RayWorkerGroup}``; call ``compute_log_prob`` on ``"actor"``, ``compute_ref_log_prob`` on ``"ref"``.
    """
    import ray
    from verl.single_controller.ray import RayClassWithInitArgs, RayWorkerGroup, ResourcePoolManager
    from verl.single_controller.ray.base import create_colocated_worker_cls
    from verl.trainer.ppo.utils import Role
    from verl.workers.engine_workers import ActorRolloutRefWorker

    if not roles:
        raise ValueError("create_worker_groups needs at least one role")
    by_name = {str(role): role for role in Role}
    unknown = [role for role in roles if role not in by_name]
    if unknown:
        raise ValueError(f"unknown worker roles {unknown}; verl's roles are {sorted(by_name)}")
    manager = ResourcePoolManager(
        resource_pool_spec={pool_name: [config.trainer.n_gpus_per_node] * config.trainer.nnodes},
        mapping={by_name[role]: pool_name for role in roles},
    )
    manager.create_resource_pool()
    remote_cls = ray.remote(worker_cls or ActorRolloutRefWorker)
    class_dict = {
        role: RayClassWithInitArgs(cls=remote_cls, config=config.actor_rollout_ref, role=role) for role in roles
    }
    fused = RayWorkerGroup(
        resource_pool=manager.resource_pool_dict[pool_name],
        ray_cls_with_init=create_colocated_worker_cls(class_dict=class_dict),
        device_name=config.trainer.device,
    )
    groups = fused.spawn(prefix_set=class_dict.keys())
    for role in roles:
        groups[role].init_model()
    return groups


def build_log_prob_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    temperature: float = 1.0,
    calculate_entropy: bool = False,
) -> TensorDict:
    """The no-padding batch the V1 trainer hands to ``compute_log_prob`` / ``compute_ref_log_prob``.

    Per sample ``i`` (jagged, ``torch.int64``): ``input_ids = prompts[i] ++ responses[i]`` and
    ``position_ids = arange(len(input_ids))``, shape (bs, P_i + R_i); ``prompts`` (bs, P_i); ``responses``,
    ``response_mask``, ``loss_mask`` (bs, R_i) with masks all ones. Non-tensor fields: ``temperature``,
    ``calculate_entropy`` and ``compute_loss=False``, as the trainer sets them for old/ref log-probs.
    The workers return ``log_probs`` over the whole sequence; :func:`verl.workers.utils.padding.response_from_nested`
    with this ``response_mask`` cuts out the response part.
    """
    from verl.utils import tensordict_utils as tu

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    empty = [
        i for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)) if not prompt or not response
    ]
    if empty:
        raise ValueError(f"samples {empty} have an empty prompt or response")

    def jagged(rows: Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.nested.as_nested_tensor(
            [torch.tensor(row, dtype=torch.int64) for row in rows], layout=torch.jagged
        )

    sequences = [list(prompt) + list(response) for prompt, response in zip(prompts, responses, strict=True)]
    response_mask = jagged([[1] * len(response) for response in responses])
    return tu.get_tensordict(
        tensor_dict={
            "input_ids": jagged(sequences),
            "position_ids": jagged([range(len(sequence)) for sequence in sequences]),
            "prompts": jagged(prompts),
            "responses": jagged(responses),
            "response_mask": response_mask,
            "loss_mask": response_mask.clone(),
        },
        non_tensor_dict={"temperature": temperature, "calculate_entropy": calculate_entropy, "compute_loss": False},
    )
