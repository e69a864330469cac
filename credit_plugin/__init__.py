"""CREDIT (Contrastive REward from DIsTillation) for verl.

Importing the package registers the ``credit`` and ``sdpo`` advantage estimators with verl; verl does
this itself through the ``verl.plugins`` entry point, or loudly with ``VERL_USE_EXTERNAL_MODULES=credit_plugin``.
"""

# First: verl reads the device platform once, while the trainer imports below load its engines.
import credit_plugin.cpu  # noqa: F401, I001  (registers the "cpu" platform for VERL_PLATFORM=cpu)
from credit_plugin.config import CONFIG_DIR, CreditConfig
from credit_plugin.negatives import sample_negatives
from credit_plugin.registration import assert_registered, register
from credit_plugin.rewards import contrastive_baseline, credit_token_rewards, sdpo_token_rewards

__version__ = "0.1.0"
__all__ = [
    "CONFIG_DIR",
    "CreditConfig",
    "assert_registered",
    "contrastive_baseline",
    "credit_token_rewards",
    "register",
    "sample_negatives",
    "sdpo_token_rewards",
]

register()
