"""A small procedurally generated task with rich textual feedback: the demo's default data.

Three families of short exact-answer problems, each asked in one user message and answered with a final
``Answer: <value>`` line:

- ``arithmetic``: ``Compute 3 + 4 * 2.`` -> ``11`` (three one-digit operands, ``+ - *`` with precedence);
- ``reverse``: ``Reverse the letters: a b c.`` -> ``c b a``;
- ``sort``: ``Sort the digits: 3 1 2.`` -> ``1 2 3``.

:func:`compute_score` follows verl's custom reward function signature and returns ``{"score", "acc",
"feedback"}``; the feedback explains the mistake and the correct result, so a teacher conditioned on it has
real information. :func:`write_parquet` writes train/val files in verl's RL dataset format (``RLHFDataset``).
Use it in a run with ``reward.custom_reward_function.path=pkg://credit_plugin.dev.tiny.task`` and
``reward.custom_reward_function.name=compute_score``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_SOURCE = "credit_tiny"
KINDS = ("arithmetic", "reverse", "sort")
ANSWER_INSTRUCTION = "End with 'Answer: <value>'."
ANSWER_PATTERN = re.compile(r"Answer:[ \t]*([^\n]*)")
OPERATORS = ("+", "-", "*")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Five items already stall the tiny model's pre-training on reversal; four keep it learnable in seconds.
MIN_ITEMS, MAX_ITEMS = 3, 4


@dataclass(frozen=True)
class Problem:
    """One problem: ``kind`` in :data:`KINDS`, ``question`` the raw operands (``"3 + 4 * 2"``, ``"a b c"``)."""

    kind: str
    question: str

    @property
    def prompt(self) -> str:
        head = {"arithmetic": "Compute", "reverse": "Reverse the letters:", "sort": "Sort the digits:"}[self.kind]
        return f"{head} {self.question}.\n{ANSWER_INSTRUCTION}"

    @property
    def answer(self) -> str:
        items = self.question.split()
        if self.kind == "arithmetic":
            return str(_evaluate(items)[1])
        if self.kind == "reverse":
            return " ".join(reversed(items))
        return " ".join(sorted(items))


def sample_problem(rng: random.Random, kinds: tuple[str, ...] = KINDS) -> Problem:
    """Draw one problem of one of ``kinds``; lengths are kept short so prompts stay under ~30 tokens."""
    unknown = sorted(set(kinds) - set(KINDS))
    if not kinds or unknown:
        raise ValueError(f"tiny task kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)}")
    kind = rng.choice(kinds)
    if kind == "arithmetic":
        a, b, c = (rng.randint(1, 9) for _ in range(3))
        question = f"{a} {rng.choice(OPERATORS)} {b} {rng.choice(OPERATORS)} {c}"
    elif kind == "reverse":
        question = " ".join(rng.choice(LETTERS) for _ in range(rng.randint(MIN_ITEMS, MAX_ITEMS)))
    else:
        question = " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(MIN_ITEMS, MAX_ITEMS)))
    return Problem(kind, question)


def sample_problems(
    n: int, seed: int, exclude: set[Problem] | None = None, kinds: tuple[str, ...] = KINDS
) -> list[Problem]:
    """``n`` distinct problems of ``kinds`` drawn with ``random.Random(seed)``, none of them in ``exclude``."""
    rng, seen, problems = random.Random(seed), set(exclude or ()), []
    while len(problems) < n:
        problem = sample_problem(rng, kinds)
        if problem not in seen:
            seen.add(problem)
            problems.append(problem)
    return problems


def _evaluate(items: list[str]) -> tuple[list[str], int]:
    """Evaluate ``a op b op c`` with ``*`` first, else left to right; returns the steps in words and the value."""
    a, op1, b, op2, c = items
    apply = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    if op2 == "*" and op1 != "*":
        inner = apply[op2](int(b), int(c))
        value = apply[op1](int(a), inner)
        return [f"{b} * {c} = {inner} is evaluated first", f"then {a} {op1} {inner} = {value}"], value
    inner = apply[op1](int(a), int(b))
    value = apply[op2](inner, int(c))
    return [f"{a} {op1} {b} = {inner} is evaluated first", f"then {inner} {op2} {c} = {value}"], value


def extract_answer(solution_str: str) -> str | None:
    """The text after the last ``Answer:`` on its line, without surrounding spaces or a final period."""
    matches = ANSWER_PATTERN.findall(solution_str)
    return matches[-1].strip().rstrip(".").strip() if matches else None


def _items(answer: str) -> list[str]:
    """Sequence answers may be spaced, comma separated or written together (``"cba"``)."""
    parts = [part for part in re.split(r"[\s,]+", answer) if part]
    return list(parts[0]) if len(parts) == 1 else parts


def _judge(problem: Problem, given: str) -> str | None:
    """Feedback for a wrong or malformed answer to ``problem``, or None if ``given`` is correct."""
    expected = problem.answer
    if problem.kind == "arithmetic":
        steps, _ = _evaluate(problem.question.split())
        if not re.fullmatch(r"-?\d+", given):
            return f"Your answer '{given}' is not an integer: {', '.join(steps)}."
        if int(given) == int(expected):
            return None
        return f"Your answer {given} is wrong: {', '.join(steps)}."
    items, want = _items(given), expected.split()
    if items == want:
        return None
    rule = "reversed" if problem.kind == "reverse" else "in ascending order"
    if len(items) != len(want):
        return (
            f"Your answer '{given}' has {len(items)} item{'s' * (len(items) != 1)}, expected {len(want)}: "
            f"{problem.question} {rule} is {expected}."
        )
    position = next(i for i, (got, ok) in enumerate(zip(items, want, strict=True)) if got != ok)
    return (
        f"Your answer '{given}' is wrong at position {position + 1}: '{items[position]}' should be "
        f"'{want[position]}'; {problem.question} {rule} is {expected}."
    )


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl custom reward function: exact-match score plus textual feedback.

    Args:
        data_source: must be :data:`DATA_SOURCE`.
        solution_str: the decoded response; its last ``Answer: <value>`` line is graded.
        ground_truth: the expected answer (``reward_model.ground_truth`` of the row).
        extra_info: the row's ``extra_info``; its ``kind`` and ``question`` make the feedback explain the
            solution. Without them the feedback only states the expected answer.
        kwargs: further arguments verl may pass (reward router address, ...), ignored.

    Returns:
        ``{"score": 1.0 or 0.0, "acc": bool, "feedback": str}``; ``feedback`` is ``""`` for a correct answer.
    """
    if data_source != DATA_SOURCE:
        raise ValueError(f"tiny task compute_score got data_source={data_source!r}, expects {DATA_SOURCE!r}")
    given = extract_answer(solution_str)
    if given is None:
        feedback = "No answer found: end your reply with 'Answer: <value>'."
    elif not given:
        feedback = "Your 'Answer:' line is empty: write the value after 'Answer:'."
    elif extra_info and extra_info.get("kind") in KINDS and extra_info.get("question"):
        problem = Problem(extra_info["kind"], extra_info["question"])
        if problem.answer != ground_truth:
            raise ValueError(
                f"extra_info (index {extra_info.get('index')}) says {problem} with answer {problem.answer!r}, "
                f"but ground_truth is {ground_truth!r}"
            )
        feedback = _judge(problem, given) or ""
    else:
        matches = _items(given) == ground_truth.split() if " " in ground_truth else given == ground_truth
        feedback = "" if matches else f"Your answer '{given}' is wrong: expected {ground_truth}."
    correct = given is not None and feedback == ""
    return {"score": float(correct), "acc": correct, "feedback": feedback}


def to_row(problem: Problem, split: str, index: int) -> dict[str, Any]:
    """One row in verl's RL dataset format (the layout of verl's ``examples/data_preprocess/gsm8k.py``)."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": problem.prompt}],
        "ability": problem.kind,
        "reward_model": {"style": "rule", "ground_truth": problem.answer},
        "extra_info": {"split": split, "index": index, "kind": problem.kind, "question": problem.question},
    }


def write_parquet(
    out_dir: str | Path, n_train: int, n_val: int, seed: int, kinds: tuple[str, ...] = KINDS
) -> tuple[Path, Path]:
    """Write ``train.parquet`` and ``val.parquet`` of ``kinds`` under ``out_dir``; validation never occurs in train.

    Returns:
        (train_path, val_path).
    """
    import datasets

    for name, value in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"write_parquet: {name} must be a positive int, got {value!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = sample_problems(n_train, seed, kinds=kinds)
    # A derived seed keeps the validation stream independent of n_train.
    val = sample_problems(n_val, seed + 1_000_003, exclude=set(train), kinds=kinds)
    paths = []
    for split, problems in (("train", train), ("val", val)):
        path = out_dir / f"{split}.parquet"
        datasets.Dataset.from_list([to_row(p, split, i) for i, p in enumerate(problems)]).to_parquet(str(path))
        paths.append(path)
    return paths[0], paths[1]
