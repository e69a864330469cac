"""CREDIT (Contrastive REward from DIsTillation) for verl.

Importing the package registers the ``credit`` and ``sdpo`` advantage estimators with verl; verl does
this itself through the ``verl.plugins`` entry point, or loudly with ``VERL_USE_EXTERNAL_MODULES=credit_plugin``.
"""

import importlib.util
import sys

# How to see an import error of this package: verl loads it through its ``verl.plugins`` entry point and logs a
# failure only at debug level, so the run fails later with "Unknown trainer 'credit'" or an unknown estimator.
SHOW_IMPORT_ERROR = (
    "set VERL_USE_EXTERNAL_MODULES=credit_plugin (for Ray workers: "
    "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=credit_plugin) to see the full traceback"
)


def _report_import_error(error: BaseException) -> None:
    """Say on stderr, where verl's entry-point loader does not swallow it, why the plugin did not load."""
    sys.stderr.write(
        f"credit_plugin could not be imported: {type(error).__name__}: {error}\n"
        "verl hides this error when it loads plugins, and then reports trainer_mode 'credit' or the 'credit' "
        "estimator as unknown; fix the import (reinstall credit_plugin and its dependencies), and "
        f"{SHOW_IMPORT_ERROR}\n"
    )


try:
    from credit_plugin.config import CONFIG_DIR, CreditConfig
    from credit_plugin.negatives import sample_negatives
    from credit_plugin.rewards import contrastive_baseline, credit_token_rewards, sdpo_token_rewards
except Exception as _error:
    _report_import_error(_error)
    raise

__version__ = "0.1.0"
__all__ = [
    "CONFIG_DIR",
    "CreditConfig",
    "contrastive_baseline",
    "credit_token_rewards",
    "sample_negatives",
    "sdpo_token_rewards",
]

# Without verl the math modules stay usable on their own; with it, registration is part of the import.
# The development room (credit_plugin.dev) is imported only when asked for (see credit_plugin.registration).
if importlib.util.find_spec("verl") is not None:
    try:
        from credit_plugin.registration import assert_registered, cpu_platform_selected, register

        if cpu_platform_selected():
            # First: verl reads the device platform once, while register() below loads its engines.
            import credit_plugin.dev.cpu  # noqa: F401  (registers the "cpu" platform, its engines and mends)
        register()
    except Exception as _error:
        _report_import_error(_error)
        raise
    __all__ += ["assert_registered", "register"]
