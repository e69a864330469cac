"""The demo's built-in task and model, generated locally (no download).

- :mod:`credit_plugin.dev.tiny.task`: short arithmetic / reversal / sorting problems, a verifier with textual
  feedback (verl custom reward function), and train/val parquet files in verl's RL dataset format.
- :mod:`credit_plugin.dev.tiny.model`: a tiny Qwen2 with the real Qwen tokenizer, pre-trained for about a minute
  on one CPU thread so that temperature-1 samples succeed on roughly a third of the prompts.

``python -m credit_plugin.dev.tiny OUT_DIR`` writes both (``OUT_DIR/data``, ``OUT_DIR/model``).
"""

from credit_plugin.dev.tiny.model import TinyModelSpec, build_tiny_model
from credit_plugin.dev.tiny.task import DATA_SOURCE, compute_score, write_parquet

__all__ = ["DATA_SOURCE", "TinyModelSpec", "build_tiny_model", "compute_score", "write_parquet"]
