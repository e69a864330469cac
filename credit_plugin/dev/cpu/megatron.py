"""verl's Megatron engine on the CPU platform (development and CI only).

With ``VERL_PLATFORM=cpu`` and ``credit_plugin[megatron]`` installed (megatron-core 0.16.1, mbridge 0.15.1),
:func:`enable` applies the mends of ``credit_plugin.dev.patches.megatron_*`` and registers verl's Megatron
engines for device ``cpu``. The engine then runs with the config of :data:`MEGATRON_CPU_OVERRIDES`: the
vanilla mbridge, fp32, padded batches, no sequence parallelism, no distributed optimizer. Nothing here is
imported or applied on an accelerator.
"""

from __future__ import annotations

import importlib.util

DEVICE = "cpu"
BACKENDS = ("megatron",)

# Hydra overrides of ``ppo_trainer`` (on top of ``model_engine=megatron``) that verl's Megatron engine needs
# on CPU; the ref role inherits TP/PP and these from the actor's ``megatron`` section.
MEGATRON_CPU_OVERRIDES: tuple[str, ...] = (
    "model_engine=megatron",
    "trainer.device=cpu",
    # megatron-bridge (verl's default) needs Python >= 3.12 and Transformer Engine.
    "actor_rollout_ref.actor.megatron.vanilla_mbridge=true",
    # bf16 moves log-probs by ~3e-2 against fp32, and the bf16 optimizer rejects CPU tensors.
    "actor_rollout_ref.actor.megatron.dtype=float32",
    "actor_rollout_ref.ref.megatron.dtype=float32",
    # megatron-core's local norm refuses sequence parallelism (it defaults to tp > 1).
    "actor_rollout_ref.actor.megatron.sequence_parallel=false",
    "actor_rollout_ref.ref.megatron.sequence_parallel=false",
    "++actor_rollout_ref.actor.megatron.override_transformer_config.sequence_parallel=false",
    "++actor_rollout_ref.ref.megatron.override_transformer_config.sequence_parallel=false",
    # Both engines of a worker build in one process and must name the same backend (megatron-core asserts on
    # the NVTE_* variables the first one set); "local" is megatron-core's own attention.
    "++actor_rollout_ref.actor.megatron.override_transformer_config.attention_backend=local",
    "++actor_rollout_ref.ref.megatron.override_transformer_config.attention_backend=local",
    # The distributed optimizer rejects CPU tensors; fp32 parameters get megatron-core's FP32Optimizer.
    "actor_rollout_ref.actor.megatron.use_distributed_optimizer=false",
    # The local attention refuses packed (thd) sequences: padded batches instead.
    "actor_rollout_ref.model.use_remove_padding=false",
    "actor_rollout_ref.model.use_fused_kernels=false",
)


def available() -> bool:
    """Whether the Megatron stack (megatron-core and mbridge) is installed."""
    # find_spec of a submodule imports its parent, and raises when that parent is missing: look top-level first.
    return all(importlib.util.find_spec(name) is not None for name in ("megatron", "mbridge")) and (
        importlib.util.find_spec("megatron.core") is not None
    )


def _apply_mbridge_mends() -> None:
    from credit_plugin.dev.patches import megatron_build_on_cpu, megatron_local_spec_on_cpu

    megatron_local_spec_on_cpu.apply()
    megatron_build_on_cpu.apply()


def _on_cpu(engine_cls: type) -> type:
    """``engine_cls`` applying the mbridge mends when it builds its model: verl imports mbridge only then, and
    importing it in every CPU worker (FSDP ones too) would cost seconds each."""

    class Engine(engine_cls):
        def initialize(self):
            _apply_mbridge_mends()
            return super().initialize()

    Engine.__name__ = Engine.__qualname__ = f"CPU{engine_cls.__name__}"
    return Engine


def register_engines() -> None:
    """Register verl's Megatron language- and value-model engines for ``cpu`` (idempotent)."""
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.megatron.transformer_impl import MegatronEngineWithLMHead, MegatronEngineWithValueHead

    for model_type, engine_cls in (
        ("language_model", MegatronEngineWithLMHead),
        ("value_model", MegatronEngineWithValueHead),
    ):
        registered = EngineRegistry._engines.get(model_type, {})
        missing = [backend for backend in BACKENDS if DEVICE not in registered.get(backend, {})]
        if missing:
            EngineRegistry.register(model_type=model_type, backend=missing, device=DEVICE)(_on_cpu(engine_cls))


def enable() -> None:
    """Apply the Megatron CPU mends and register the engines (idempotent); version-checked by each patch.

    The mends of mbridge apply when a Megatron engine builds its model (:func:`_on_cpu`).
    """
    from credit_plugin.dev.patches import (
        megatron_checkpoint_on_cpu,
        megatron_cuda_device_on_cpu,
        megatron_cuda_literals_on_cpu,
        megatron_fp32_on_cpu,
        megatron_grad_clip_on_cpu,
        megatron_no_offload_on_cpu,
        megatron_padded_mask_on_cpu,
        megatron_rng_on_cpu,
    )

    for patch in (
        megatron_cuda_device_on_cpu,
        megatron_cuda_literals_on_cpu,
        megatron_rng_on_cpu,
        megatron_fp32_on_cpu,
        megatron_padded_mask_on_cpu,
        megatron_no_offload_on_cpu,
        megatron_grad_clip_on_cpu,
        megatron_checkpoint_on_cpu,
    ):
        patch.apply()
    register_engines()
