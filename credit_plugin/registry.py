"""The names the plugin registers with verl, and the check that this process holds them.

A leaf of the import graph: ``registration`` (which imports the trainer to register it) and the trainer (which
checks registration when it starts) both import it, so neither imports the other.
"""

from __future__ import annotations

# ``trainer.v1.trainer_mode`` of credit_plugin.trainer.CreditTrainer.
TRAINER_MODE = "credit"


def assert_registered() -> None:
    """Raise a clear error if the plugin's registrations are missing from this process."""
    from verl.trainer.ppo import core_algos, ray_trainer

    from credit_plugin.estimators import ESTIMATORS
    from credit_plugin.patches import compute_advantage_batch_inputs

    missing = [name for name in ESTIMATORS if name not in core_algos.ADV_ESTIMATOR_REGISTRY]
    if missing:
        raise RuntimeError(
            f"credit_plugin did not register advantage estimators {missing} in this process; "
            f"set VERL_USE_EXTERNAL_MODULES=credit_plugin to see the import error"
        )
    from verl.trainer.ppo.v1 import get_trainer_cls

    try:
        get_trainer_cls(TRAINER_MODE)
    except (KeyError, ValueError) as error:
        raise RuntimeError(
            f"credit_plugin did not register trainer_mode {TRAINER_MODE!r} in this process; "
            "set VERL_USE_EXTERNAL_MODULES=credit_plugin to see the import error"
        ) from error
    if getattr(ray_trainer.compute_advantage, "credit_patch", None) != compute_advantage_batch_inputs.NAME:
        raise RuntimeError(f"credit_plugin patch {compute_advantage_batch_inputs.NAME!r} is not applied")
