"""CREDIT (Contrastive REward from DIsTillation) for verl.

Importing the package registers the ``credit`` and ``sdpo`` advantage estimators with verl; verl does
this itself through the ``verl.plugins`` entry point, or loudly with ``VERL_USE_EXTERNAL_MODULES=credit_plugin``.
"""

import importlib.util

from credit_plugin.config import CONFIG_DIR, CreditConfig
from credit_plugin.negatives import sample_negatives
from credit_plugin.rewards import contrastive_baseline, credit_token_rewards, sdpo_token_rewards

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
    from credit_plugin.registration import assert_registered, cpu_platform_selected, register

    if cpu_platform_selected():
        # First: verl reads the device platform once, while register() below loads its engines.
        import credit_plugin.dev.cpu  # noqa: F401  (registers the "cpu" platform, its engines and mends)
    register()
    __all__ += ["assert_registered", "register"]
