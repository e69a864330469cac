"""LiveCodeBench (``livecodebench/code_generation_lite``, release v6) to verl rows for the ``code`` scorer.

Upstream row (one per problem)::

    {"question_title": str, "question_content": str, "platform": "leetcode" | "atcoder" | "codeforces",
     "question_id": str, "contest_date": "2025-03-01T00:00:00", "starter_code": str, "difficulty": str,
     "public_test_cases": "<JSON list of {input, output, testtype}>",
     "private_test_cases": "<the same JSON, or base64(zlib(pickle(JSON)))>",
     "metadata": "<JSON, {\\"func_name\\": ...} for functional (LeetCode) problems>"}

The **public** tests give the training reward and the feedback (``train.parquet``); the **private** tests are
only ever the ground truth of ``test.parquet`` (evaluation), so the tests that shaped training never grade it.
By default every problem is in both files (SDPO's setting: train on public-test feedback, report private-test
accuracy); ``val_fraction`` also holds whole problems out of training. The ground truth is
``{"tests": [...], "fn_name": ...}`` as JSON (the layout :func:`credit_plugin.scorers.code.parse_tests` reads).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from collections.abc import Mapping
from typing import Any

from credit_plugin.data.common import (
    Filtered,
    MalformedRow,
    Report,
    chat,
    check_fraction,
    convert_rows,
    require_text,
    stable_fraction,
    verl_row,
)

DATA_SOURCE = "livecodebench_v6"
TEST_TYPES = ("stdin", "functional")
STDIN_INSTRUCTION = (
    "Write a Python program that reads the input from standard input and writes the answer to standard output. "
    "Enclose the program in ```python ... ```."
)
FUNCTIONAL_INSTRUCTION = "Complete the following starter code. Enclose your solution in ```python ... ```."


class _StringOnlyUnpickler(pickle.Unpickler):
    """LiveCodeBench pickles a plain JSON string; any class or function reference is refused (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a test-case field")


def decode_tests(field: Any, name: str) -> list[dict]:
    """A LiveCodeBench test list from its JSON text or its compressed form (``base64(zlib(pickle(json)))``)."""
    if isinstance(field, list):
        tests = field
    elif isinstance(field, str) and field.strip():
        try:
            tests = json.loads(field)
        except ValueError:
            try:
                text = _StringOnlyUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(field)))).load()
                tests = json.loads(text)
            except (ValueError, TypeError, zlib.error, pickle.UnpicklingError, EOFError) as exc:
                raise MalformedRow(f"{name} is neither JSON nor base64(zlib(pickle(JSON))): {exc}") from None
    else:
        raise MalformedRow(f"{name} is missing or empty")
    if not isinstance(tests, list) or not tests:
        raise MalformedRow(f"{name} holds no tests")
    for number, test in enumerate(tests):
        if not isinstance(test, Mapping) or not {"input", "output"} <= set(test):
            raise MalformedRow(f"{name}[{number}] needs 'input' and 'output'")
        if test.get("testtype", "stdin") not in TEST_TYPES:
            raise MalformedRow(f"{name}[{number}] has testtype {test.get('testtype')!r}, expected one of {TEST_TYPES}")
    return [
        {"input": str(t["input"]), "output": str(t["output"]), "testtype": t.get("testtype", "stdin")} for t in tests
    ]


def _fn_name(row: Mapping[str, Any]) -> str | None:
    metadata = row.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata) if metadata.strip() else {}
        except ValueError:
            raise MalformedRow(f"metadata is not JSON: {metadata[:80]!r}") from None
    return (metadata.get("func_name") if isinstance(metadata, Mapping) else None) or None


def convert_problem(row: Mapping[str, Any], since: str | None = None) -> tuple[dict[str, Any], list, list]:
    """``(verl row without ground truth, public tests, private tests)``; raises Filtered or MalformedRow."""
    date = str(row.get("contest_date", ""))
    if since is not None and date[:10] < since:
        raise Filtered(f"contest_date before {since}")
    content = require_text(row, "question_content")
    public = decode_tests(row.get("public_test_cases"), "public_test_cases")
    private = decode_tests(row.get("private_test_cases"), "private_test_cases")
    fn_name = _fn_name(row)
    functional = any(test["testtype"] == "functional" for test in public + private)
    if functional and not fn_name:
        raise MalformedRow("functional tests but no metadata.func_name")
    starter = str(row.get("starter_code") or "").strip()
    if starter:
        user = f"{content}\n\n{FUNCTIONAL_INSTRUCTION}\n\n```python\n{starter}\n```"
    else:
        user = f"{content}\n\n{STDIN_INSTRUCTION}"
    extra_info = {
        "question_id": str(row.get("question_id", "")),
        "platform": str(row.get("platform", "")),
        "difficulty": str(row.get("difficulty", "")),
        "contest_date": date,
        "fn_name": fn_name or "",
    }
    return verl_row(DATA_SOURCE, chat(user), "code", "", extra_info), public, private


def _with_tests(row: dict, tests: list, fn_name: str, split: str, index: int, tests_name: str) -> dict:
    ground_truth = json.dumps({"tests": tests, "fn_name": fn_name or None})
    extra_info = {**row["extra_info"], "split": split, "index": index, "tests": tests_name}
    return {**row, "reward_model": {"style": "rule", "ground_truth": ground_truth}, "extra_info": extra_info}


def convert(
    rows: list[dict], report: Report, val_fraction: float = 0.0, seed: int = 0, since: str | None = None
) -> dict[str, list[dict]]:
    """Train rows graded by public tests, test rows graded by private tests (held-out problems only in test)."""
    check_fraction("val_fraction", val_fraction)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    indexed = ((str(i), row) for i, row in enumerate(rows))
    for row, public, private in convert_rows(indexed, lambda row: convert_problem(row, since), report):
        fn_name = row["extra_info"]["fn_name"]
        key = row["extra_info"]["question_id"] or row["prompt"][-1]["content"]
        if stable_fraction(key, seed) >= val_fraction:
            splits["train"].append(_with_tests(row, public, fn_name, "train", len(splits["train"]), "public"))
        splits["test"].append(_with_tests(row, private, fn_name, "test", len(splits["test"]), "private"))
    return splits
