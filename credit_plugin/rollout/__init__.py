"""A development/CI rollout backend for verl that generates with plain ``transformers`` on CPU.

Selected with ``actor_rollout_ref.rollout.name=hf_cpu``. verl looks the name up in two registries, in
different processes: ``RolloutReplicaRegistry`` (the TaskRunner's ``LLMServerManager`` builds the
replicas) and ``_ROLLOUT_REGISTRY[(name, "async")]`` (each actor worker's ``init_model`` builds the
adapter). :func:`register` fills both and is run on import, so ``VERL_USE_EXTERNAL_MODULES=credit_plugin.rollout``
works on its own; it imports no model code and is idempotent.

Pieces: :mod:`.server` (the Ray actor that generates), :mod:`.replica` (launches it),
:mod:`.adapter` (in the actor worker: hands it the trainer's weights), :mod:`.sampling` and
:mod:`.decode` (vLLM's sampling and log-prob semantics over a batched KV-cache decode loop).
"""

from __future__ import annotations

ROLLOUT_NAME = "hf_cpu"
ADAPTER_PATH = "credit_plugin.rollout.adapter.HFCPURolloutAdapter"


def _load_replica() -> type:
    from credit_plugin.rollout.replica import HFCPUReplica

    return HFCPUReplica


def register() -> None:
    """Make ``rollout.name=hf_cpu`` resolvable in this process (idempotent, cheap)."""
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = ADAPTER_PATH
    RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)


register()
