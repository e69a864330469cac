"""SciKnowEval (``hicai-zju/SciKnowEval``) L3 multiple choice to verl rows for the ``science`` scorer.

Upstream row (one per question)::

    {"question": str, "choices": {"text": [str, ...], "label": ["A", "B", ...]}, "answerKey": "B",
     "type": "mcq-4-choices" | "mcq-2-choices" | "open-ended-qa" | ..., "domain": "Chemistry",
     "details": {"level": "L3", "task": str, "subtask": str, "source": str}, ...}

Kept: level L3, a ``mcq-*`` type, a domain in ``domains``; other rows are counted as filtered. The prompt lists
the options as ``A. text`` lines and asks for ``\\boxed{<letter>}``; the ground truth is the answer letter
(what :func:`credit_plugin.scorers.science.score_science` reads). ``data_source`` is ``sciknoweval/<domain>``,
so verl reports validation accuracy per domain. SciKnowEval ships one split: a seeded hash of the question
text holds out ``val_fraction`` of the questions for evaluation (identical questions always land together).
"""

from __future__ import annotations

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
from credit_plugin.scorers.science import OPTION_LETTERS

DOMAINS = ("biology", "chemistry", "material", "physics")
LEVEL = "L3"
INSTRUCTION = "Answer with the letter of the correct option in \\boxed{}, for example \\boxed{A}."


def _options(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    choices = row.get("choices")
    if not isinstance(choices, Mapping):
        raise MalformedRow("field 'choices' must be an object with 'text' and 'label' lists")
    texts, labels = choices.get("text"), choices.get("label")
    if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
        raise MalformedRow(f"choices.text and choices.label must be lists of one length, got {texts!r}, {labels!r}")
    if len(labels) < 2:
        raise MalformedRow(f"a multiple-choice question needs at least 2 options, got {len(labels)}")
    expected = list(OPTION_LETTERS[: len(labels)])
    if [str(label).strip() for label in labels] != expected:
        raise MalformedRow(f"choices.label must be {expected}, got {labels!r}")
    if not all(isinstance(text, str) and text.strip() for text in texts):
        raise MalformedRow("an option text is empty")
    return list(zip(expected, (text.strip() for text in texts), strict=True))


def convert_row(row: Mapping[str, Any], domains: tuple[str, ...] = DOMAINS) -> dict[str, Any]:
    """One upstream row to a verl row (``extra_info`` without split/index); raises Filtered or MalformedRow."""
    details = row.get("details") if isinstance(row.get("details"), Mapping) else {}
    level = str(details.get("level", row.get("level", "")))
    if level != LEVEL:
        raise Filtered(f"level {level or 'missing'} (only {LEVEL} is kept)")
    kind = str(row.get("type", ""))
    if not kind.startswith("mcq"):
        raise Filtered(f"type {kind or 'missing'} (only mcq-* is kept)")
    domain = str(row.get("domain", "")).strip().lower()
    if domain not in domains:
        raise Filtered(f"domain {domain or 'missing'} (not in {list(domains)})")
    question = require_text(row, "question")
    options = _options(row)
    answer = str(row.get("answerKey", "")).strip().upper()
    if answer not in {label for label, _ in options}:
        raise MalformedRow(f"answerKey {row.get('answerKey')!r} is not one of the option labels")
    listing = "\n".join(f"{label}. {text}" for label, text in options)
    return verl_row(
        data_source=f"sciknoweval/{domain}",
        prompt=chat(f"{question}\n\n{listing}\n\n{INSTRUCTION}"),
        ability="science",
        ground_truth=answer,
        extra_info={"domain": domain, "task": str(details.get("task", "")), "subtask": str(details.get("subtask", ""))},
    )


def convert(
    rows: list[dict],
    report: Report,
    val_fraction: float = 0.1,
    seed: int = 0,
    domains: tuple[str, ...] = DOMAINS,
) -> dict[str, list[dict]]:
    """Train and test rows; a question is in exactly one of them (chosen by a seeded hash of its text)."""
    check_fraction("val_fraction", val_fraction)
    unknown = sorted(set(domains) - set(DOMAINS))
    if unknown:
        raise ValueError(f"unknown SciKnowEval domain(s) {unknown}; known: {list(DOMAINS)}")
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    indexed = ((str(i), row) for i, row in enumerate(rows))
    for converted in convert_rows(indexed, lambda row: convert_row(row, domains), report):
        question = converted["prompt"][-1]["content"]
        split = "test" if stable_fraction(" ".join(question.split()).lower(), seed) < val_fraction else "train"
        converted["extra_info"].update(split=split, index=len(splits[split]))
        splits[split].append(converted)
    return splits
