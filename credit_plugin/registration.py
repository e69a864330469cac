"""Everything ``import credit_plugin`` registers with verl, and the check that it happened.

verl imports this package through its ``verl.plugins`` entry point in every process, but swallows any
error there; so the trainer calls :func:`assert_registered` where registration is relied upon.
"""

from __future__ import annotations

from credit_plugin.patches import compute_advantage_batch_inputs

ESTIMATORS = ("credit", "sdpo")


def register() -> None:
    """Register CREDIT's estimators and apply the patches they need (idempotent)."""
    import credit_plugin.estimators  # noqa: F401  (registers by decorator on first import)
    import credit_plugin.reward_manager  # noqa: F401  (registers reward manager "credit")
    import credit_plugin.rollout  # noqa: F401  (registers the hf_cpu development rollout)
    import credit_plugin.trainer  # noqa: F401  (registers trainer_mode "credit")

    compute_advantage_batch_inputs.apply()


def assert_registered() -> None:
    """Raise a clear error if the plugin's registrations are missing from this process."""
    from verl.trainer.ppo import core_algos, ray_trainer

    missing = [name for name in ESTIMATORS if name not in core_algos.ADV_ESTIMATOR_REGISTRY]
    if missing:
        raise RuntimeError(
            f"credit_plugin did not register advantage estimators {missing} in this process; "
            f"set VERL_USE_EXTERNAL_MODULES=credit_plugin to see the import error"
        )
    from verl.trainer.ppo.v1 import get_trainer_cls

    try:
        get_trainer_cls("credit")
    except (KeyError, ValueError) as error:
        raise RuntimeError("credit_plugin did not register trainer_mode 'credit' in this process") from error
    if getattr(ray_trainer.compute_advantage, "credit_patch", None) != compute_advantage_batch_inputs.NAME:
        raise RuntimeError(f"credit_plugin patch {compute_advantage_batch_inputs.NAME!r} is not applied")
