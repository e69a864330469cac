"""Shared parts of the converters: loading a source, reporting malformed rows, splitting, writing parquet.

Every converter turns upstream rows into verl's RL dataset rows (``RLHFDataset``)::

    {"data_source": str, "prompt": [{"role", "content"}, ...], "ability": str,
     "reward_model": {"style": "rule", "ground_truth": str}, "extra_info": {"split", "index", ...}}

A row the converter cannot use raises :class:`MalformedRow`; :class:`Report` records it with its index and
reason (or, with ``on_malformed="error"``, the run fails listing every such row). Rows left out on purpose (an
SciKnowEval level or domain that was not asked for) are counted per reason in the report, never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ON_MALFORMED = ("skip", "error")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


class MalformedRow(ValueError):
    """An upstream row that cannot be converted; the message is the reason shown to the user."""


class Filtered(Exception):
    """An upstream row left out on purpose (e.g. not L3); the message is the reason counted in the report."""


@dataclass
class Report:
    """What happened to every input row: converted, filtered (counted per reason) or malformed (listed)."""

    task: str
    on_malformed: str = "skip"
    converted: int = 0
    filtered: Counter = field(default_factory=Counter)
    malformed: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_malformed not in ON_MALFORMED:
            raise ValueError(f"on_malformed must be one of {ON_MALFORMED}, got {self.on_malformed!r}")

    def add_malformed(self, index: str, reason: str) -> None:
        self.malformed.append((index, reason))
        print(f"[{self.task}] malformed row {index}: {reason}", file=sys.stderr)

    def check(self) -> None:
        """With ``on_malformed="error"``, fail naming every malformed row."""
        if self.malformed and self.on_malformed == "error":
            lines = "\n".join(f"  row {index}: {reason}" for index, reason in self.malformed)
            raise SystemExit(
                f"[{self.task}] {len(self.malformed)} malformed row(s) (rerun with --on-malformed skip to leave "
                f"them out):\n{lines}"
            )

    def as_dict(self) -> dict:
        return {
            "task": self.task,
            "converted": self.converted,
            "filtered": dict(self.filtered),
            "malformed": [{"index": index, "reason": reason} for index, reason in self.malformed],
        }


def convert_rows(
    rows: Iterable[tuple[str, Mapping[str, Any]]],
    convert: Callable[[Mapping[str, Any]], Any],
    report: Report,
) -> Iterator[Any]:
    """Apply ``convert`` to each ``(index, row)``, sending malformed and filtered rows to ``report``."""
    for index, row in rows:
        try:
            converted = convert(row)
        except Filtered as reason:
            report.filtered[str(reason)] += 1
            continue
        except MalformedRow as reason:
            report.add_malformed(index, str(reason))
            continue
        report.converted += 1
        yield converted


def load_rows(src: str, split: str | None = None, config: str | None = None) -> list[dict]:
    """Rows of a local ``.json`` (a list, or one object per line), ``.jsonl`` or ``.parquet`` file, else of a
    dataset-hub name or a local dataset folder (e.g. a hub snapshot), loaded with
    ``datasets.load_dataset(src, config, split=split)``."""
    path = Path(src)
    if path.suffix in LOCAL_SUFFIXES or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"--src {src}: no such file")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise ValueError(f"--src {src}:{number}: not one JSON object per line ({exc})") from None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ValueError(f"--src {src}: expected a JSON list of objects or one object per line")
        return rows
    import datasets

    dataset = datasets.load_dataset(src, config, split=split or "train")
    return [dict(row) for row in dataset]


def stable_fraction(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``key`` and ``seed``: the same item lands in the same split on every run."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_fraction(name: str, value: float) -> None:
    """Refuse a held-out fraction outside [0, 1), naming the option."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def write_split(rows: list[dict], path: Path) -> Path:
    """Write verl rows to a parquet file; refuses an empty split (verl's dataloader would fail later)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"{path.name}: no rows to write (every row was filtered or malformed; see the report)")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def chat(user: str, system: str | None = None) -> list[dict[str, str]]:
    """verl's ``prompt`` column: chat messages, the system message first when there is one."""
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": user}]


def verl_row(
    data_source: str, prompt: list[dict], ability: str, ground_truth: str, extra_info: dict[str, Any]
) -> dict[str, Any]:
    return {
        "data_source": data_source,
        "prompt": prompt,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": extra_info,
    }


def require_text(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MalformedRow(f"field {key!r} is missing or empty")
    return value.strip()
