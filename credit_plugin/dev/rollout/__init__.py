"""A development/CI rollout backend for verl that generates with plain ``transformers`` on CPU.

Selected with ``actor_rollout_ref.rollout.name=hf_cpu``. verl looks the name up in two registries, in
different processes: ``RolloutReplicaRegistry`` (the TaskRunner's ``LLMServerManager`` builds the
replicas) and ``_ROLLOUT_REGISTRY[(name, "async")]`` (each actor worker's ``init_model`` builds the
adapter). :func:`register` fills both and is run on import, so ``VERL_USE_EXTERNAL_MODULES=credit_plugin.dev.rollout``
works on its own; it imports no model code and is idempotent.

Pieces: :mod:`.server` (the Ray actor that generates), :mod:`.replica` (launches it),
:mod:`.adapter` (in the actor worker: hands it the trainer's weights), :mod:`.sampling` and
:mod:`.decode` (vLLM's sampling and log-prob semantics over a batched KV-cache decode loop).
"""

from __future__ import annotations

from credit_plugin.registration import HF_CPU_ADAPTER_PATH as ADAPTER_PATH
from credit_plugin.registration import HF_CPU_ROLLOUT as ROLLOUT_NAME
from credit_plugin.registration import register_hf_cpu_rollout as register

__all__ = ["ADAPTER_PATH", "ROLLOUT_NAME", "register"]

register()
