"""verl's FSDP engines, registered for device ``cpu``.

verl 0.9.1 registers ``FSDPEngineWithLMHead`` / ``FSDPEngineWithValueHead`` for ``cuda`` and ``npu`` only, and
``EngineRegistry.new`` looks engines up by the platform's device name. The engines themselves run on CPU
with the ``fsdp2`` strategy (FSDP1's ``sync_module_states`` rejects CPU parameters).
"""

from __future__ import annotations

DEVICE = "cpu"
BACKENDS = ("fsdp", "fsdp2")


def register_engines() -> None:
    """Register the FSDP language- and value-model engines for ``cpu`` (idempotent)."""
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, engine_cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        # The registry asserts on a second registration and has no public lookup that skips the device probe.
        registered = EngineRegistry._engines.get(model_type, {})
        missing = [backend for backend in BACKENDS if DEVICE not in registered.get(backend, {})]
        if missing:
            EngineRegistry.register(model_type=model_type, backend=missing, device=DEVICE)(engine_cls)
