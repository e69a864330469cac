"""Data preparation for the paper's tasks: upstream datasets to verl's RL parquet files.

    python -m credit_plugin.data prepare --task sciknoweval   --src hicai-zju/SciKnowEval --out data/sciknoweval
    python -m credit_plugin.data prepare --task toolalpaca    --src train_data.json --val-src eval_simulated.json \\
        --out data/toolalpaca
    python -m credit_plugin.data prepare --task livecodebench --src test6.jsonl --out data/livecodebench

Each writes ``train.parquet`` (reward and feedback), ``test.parquet`` (evaluation only) and ``report.json``
(converted, filtered per reason, malformed rows with index and reason). ``--src`` is a local ``.json``,
``.jsonl`` or ``.parquet`` file or a dataset-hub name (``datasets.load_dataset``). The converters are pure Python
(no verl import); their rows feed the scorers of :mod:`credit_plugin.scorers` by ``data_source`` prefix.
"""

from __future__ import annotations

from credit_plugin.data import livecodebench, sciknoweval, toolalpaca
from credit_plugin.data.common import MalformedRow, Report, load_rows

TASKS = {"sciknoweval": sciknoweval, "toolalpaca": toolalpaca, "livecodebench": livecodebench}

__all__ = ["TASKS", "MalformedRow", "Report", "load_rows"]
