"""Multiple-choice scorer (SciKnowEval style): find the chosen option letter in free text.

The letter is looked for in the text after any reasoning (``</think>``), in this order, the last
match of the first rule that matches winning:

1. ``\\boxed{B}`` (also ``\\boxed{(B)}``, ``\\boxed{\\text{B}}``, ``\\boxed{B. text}``, ``\\boxed{b}``);
2. an answer statement: ``Answer: B``, ``the answer is (B)``, ``Final answer: **B**``,
   ``the correct option is B``, ``answer: (b)`` (lower case only in brackets);
3. a response that is only the letter (``B``, ``(b)``, ``B.``);
4. the last standalone capital letter: ``(B)`` anywhere, or ``B`` not followed by a lower-case word
   (so the article "A" and the pronoun "I" in prose are skipped).

Options are the letters A to J. Feedback never names the correct option unless ``reveal_answer``.
Parsing takes linear time in the response's length (no pattern here can backtrack over a run of text
more than once); non-text and over-long responses score 0 without being parsed.
"""

from __future__ import annotations

import re
from typing import Any

from credit_plugin.scorers.result import (
    DEFAULT_MAX_FEEDBACK_CHARS,
    ScoreResult,
    check_max_feedback_chars,
    final_answer_text,
    truncate_feedback,
    unscorable_response,
)

OPTION_LETTERS = "ABCDEFGHIJ"
_UPPER = f"[{OPTION_LETTERS}]"
_ANY_CASE = f"[{OPTION_LETTERS}{OPTION_LETTERS.lower()}]"
# An explicit letter: a capital, or either case inside brackets (a bare lower-case letter is usually a word).
_EXPLICIT = rf"(?:\(({_ANY_CASE})\)|\[({_ANY_CASE})\]|({_UPPER})(?![A-Za-z0-9]))"

_BOXED = re.compile(r"\\boxed\s*\{")
_LEADING_LETTER = re.compile(rf"[\s*]*(?:\\text\{{\s*)?[(\[]?({_ANY_CASE})(?![A-Za-z0-9])")
# Each whitespace run is matched by one quantifier only (no two adjacent ones share characters), so a
# failed match backtracks over a run at most once.
_STATEMENT = re.compile(
    r"(?i:final\s+answer|answer|correct\s+(?:option|choice)|(?:best|right)\s+(?:option|choice))"
    r"(?:\s+(?i:is|would\s+be|will\s+be)(?![A-Za-z]))?[\s*_:=]*(?:(?i:option|choice)[\s*_]*)?" + _EXPLICIT
)
_ONLY_LETTER = re.compile(rf"^[\s*]*[(\[]?({_ANY_CASE})[)\].:]?[\s*]*$")
_STANDALONE = re.compile(rf"(?<![A-Za-z0-9])(\()?({_UPPER})(\))?(?![A-Za-z0-9])")
_NEXT_VISIBLE = re.compile(r"\s*(\S?)")


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of the content of every ``\\boxed{...}`` with balanced braces, in order; one pass.

    Spans, not copies: nested boxes (``\\boxed{\\boxed{...}}``) would make copying every content quadratic.
    """
    closing, stack = {}, []
    for index, char in enumerate(text):
        if char == "{":
            stack.append(index)
        elif char == "}" and stack:
            closing[stack.pop()] = index
    spans = []
    for match in _BOXED.finditer(text):
        opening = match.end() - 1
        if opening in closing:
            spans.append((opening + 1, closing[opening]))
    return spans


def _first_group(match: re.Match) -> str:
    return next(group for group in match.groups() if group).upper()


NO_OPTION_FEEDBACK = (
    "Format problem: no answer option was found in the response. "
    "State the final answer as a single option letter, e.g. \\boxed{<letter>}."
)


def normalize_option(ground_truth: Any) -> str:
    """The option letter of a ground truth such as ``"B"``, ``"(b)"`` or ``"B."``."""
    match = _ONLY_LETTER.match(str(ground_truth))
    if match is None:
        raise ValueError(
            f"multiple-choice ground_truth must be one option letter {OPTION_LETTERS}, got {ground_truth!r}"
        )
    return match.group(1).upper()


def extract_option(response: str) -> str | None:
    """The chosen option letter of a free-text response (rules in the module docstring), or None."""
    text = final_answer_text(response)
    for start, end in reversed(_boxed_spans(text)):
        # Matched in place (pos/endpos): the pattern stops at the first character that cannot lead a letter.
        match = _LEADING_LETTER.match(text, start, end)
        if match is not None:
            return match.group(1).upper()
    statements = list(_STATEMENT.finditer(text))
    if statements:
        return _first_group(statements[-1])
    only = _ONLY_LETTER.match(text)
    if only is not None:
        return only.group(1).upper()
    for match in reversed(list(_STANDALONE.finditer(text))):
        opened, letter, closed = match.groups()
        following = _NEXT_VISIBLE.match(text, match.end()).group(1)
        if (opened and closed) or not following.islower():
            return letter
    return None


def score_science(
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    *,
    max_feedback_chars: int = DEFAULT_MAX_FEEDBACK_CHARS,
    reveal_answer: bool = False,
) -> ScoreResult:
    """1.0 if the chosen option is the ground truth's letter, else 0.0.

    Returns:
        ``feedback`` is ``""`` when correct; else it says that no option was found (a format problem) or
        that the chosen option is wrong, naming the correct one only if ``reveal_answer``.
    """
    check_max_feedback_chars(max_feedback_chars)
    correct = normalize_option(ground_truth)
    unscorable = unscorable_response(solution_str)
    if unscorable is not None:
        return ScoreResult(0.0, False, truncate_feedback(unscorable, max_feedback_chars))
    chosen = extract_option(solution_str)
    if chosen is None:
        return ScoreResult(0.0, False, truncate_feedback(NO_OPTION_FEEDBACK, max_feedback_chars))
    if chosen == correct:
        return ScoreResult(1.0, True, "")
    feedback = f"The chosen option {chosen} is incorrect."
    if reveal_answer:
        feedback += f" The correct option is {correct}."
    return ScoreResult(0.0, False, truncate_feedback(feedback, max_feedback_chars))
