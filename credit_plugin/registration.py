"""Everything ``import credit_plugin`` registers with verl, and the check that it happened.

verl imports this package through its ``verl.plugins`` entry point in every process, but swallows any
error there; so the trainer calls :func:`assert_registered` where registration is relied upon.

The development room (``credit_plugin.dev``: CPU platform, ``hf_cpu`` rollout, tiny demo task) is not imported
here. It is reached by name only, and loaded when asked for: ``VERL_PLATFORM=cpu`` (:func:`cpu_platform_selected`,
checked by ``credit_plugin/__init__.py``) and ``rollout.name=hf_cpu`` (:func:`register_hf_cpu_rollout` puts a
class path and a loader into verl's rollout registries; verl imports the code when a config selects it).
"""

from __future__ import annotations

import os

# re-exported (credit_plugin.assert_registered); defined apart so that the trainer, which registration imports,
# can call it without importing this module back
from credit_plugin.registry import assert_registered  # noqa: F401

# The development CPU platform: selected only explicitly, with VERL_PLATFORM=cpu (credit_plugin.dev.cpu).
CPU_PLATFORM = "cpu"
# The development rollout backend (credit_plugin.dev.rollout), selected with actor_rollout_ref.rollout.name=hf_cpu.
HF_CPU_ROLLOUT = "hf_cpu"
HF_CPU_ADAPTER_PATH = "credit_plugin.dev.rollout.adapter.HFCPURolloutAdapter"


def cpu_platform_selected() -> bool:
    """Whether this process selects the development CPU platform (``VERL_PLATFORM=cpu``)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == CPU_PLATFORM


def _load_hf_cpu_replica() -> type:
    from credit_plugin.dev.rollout.replica import HFCPUReplica

    return HFCPUReplica


def register_hf_cpu_rollout() -> None:
    """Make ``rollout.name=hf_cpu`` resolvable in this process (idempotent, cheap: imports no dev code).

    verl looks the name up in two registries, in different processes: ``RolloutReplicaRegistry`` (the
    TaskRunner's ``LLMServerManager`` builds the replicas, through the loader) and
    ``_ROLLOUT_REGISTRY[(name, "async")]`` (each actor worker's ``init_model`` imports the adapter by path).
    """
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    _ROLLOUT_REGISTRY[(HF_CPU_ROLLOUT, "async")] = HF_CPU_ADAPTER_PATH
    RolloutReplicaRegistry.register(HF_CPU_ROLLOUT, _load_hf_cpu_replica)


def register() -> None:
    """Register CREDIT's estimators and apply the patches they need (idempotent)."""
    import credit_plugin.async_trainers  # noqa: F401  (registers credit_colocate_async, credit_separate_async)
    import credit_plugin.estimators  # noqa: F401  (registers by decorator on first import)
    import credit_plugin.reward_manager  # noqa: F401  (registers reward manager "credit")
    import credit_plugin.trainer  # noqa: F401  (registers trainer_mode "credit")
    from credit_plugin.patches import compute_advantage_batch_inputs

    register_hf_cpu_rollout()
    compute_advantage_batch_inputs.apply()
