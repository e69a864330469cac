"""Tool-use scorer (ToolAlpaca style): parse the response's tool calls and compare them with the reference.

Calls are read from the text after any reasoning (``</think>``), in one of two formats:

- ReAct, as in ToolAlpaca: ``Action: getWeather`` followed by ``Action Input: {"city": "Paris"}``;
  every such pair is one call.
- JSON objects ``{"name": ..., "arguments": {...}}`` (also ``"parameters"``, OpenAI's
  ``{"function": {"name", "arguments": "<json string>"}}``, lists of those, and Hermes/Qwen
  ``<tool_call>...</tool_call>`` tags), used when there is no ``Action:`` line.

The ground truth is the reference call(s) in either format (JSON text or the parsed object). Calls are
compared in order; arguments compare equal after normalisation: strings without surrounding whitespace
and case, numbers and numeric strings as numbers, lists and objects element-wise. Score 1.0 iff every
call matches. Feedback names the mismatch (unparsable JSON, wrong tool, missing / unexpected / wrong
argument, wrong number of calls); the reference tool name and argument values appear only if
``reveal_answer``.

Parsing is bounded: non-text and over-long responses score 0 unparsed, no pattern backtracks over a
run of text more than once, JSON decoding attempts share a budget proportional to the response's
length, and JSON nested deeper than MAX_JSON_DEPTH is rejected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from credit_plugin.scorers.result import (
    DEFAULT_MAX_FEEDBACK_CHARS,
    ScoreResult,
    check_max_feedback_chars,
    clip,
    final_answer_text,
    truncate_feedback,
    unscorable_response,
)

_ACTION = re.compile(r"^[ \t*]*Action[ \t*]*:(.*)$", re.MULTILINE)
_ACTION_INPUT = re.compile(r"\s*[*]*Action[ \t]+Input[ \t*]*:[ \t*]*")
_FENCE_START = re.compile(r"\s*```(?:json)?\s*")
_TOOL_CALL_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_DECODER = json.JSONDecoder()
VALUE_CHARS = 200
MAX_JSON_DEPTH = 32
# Characters that JSON decoding may scan per character of the response, over all attempts together.
DECODE_BUDGET_PER_CHAR = 8

NO_CALL_FEEDBACK = (
    "No tool call was found in the response. Call a tool as\n"
    "Action: <tool name>\nAction Input: <JSON object with the arguments>"
)


@dataclass(frozen=True)
class ToolCall:
    """One parsed call; ``error`` is set (and ``arguments`` empty) when its arguments were not valid JSON."""

    name: str
    arguments: dict = field(default_factory=dict)
    error: str = ""


def _skip_fence(text: str, position: int) -> int:
    """Where JSON starts at ``position``: after an opening ```json fence if there is one."""
    fence = _FENCE_START.match(text, position)
    return fence.end() if fence else position


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (iterative: a deep value cannot exhaust the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH and isinstance(item, (list, dict)):
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class _Decoder:
    """``raw_decode`` at any position in linear time overall.

    JSON errors cost time proportional to their position in the decoded string (the error counts the
    lines before it), so each attempt decodes a window starting at its position, doubled while the
    decoder runs into the window's end; all attempts share a budget of scanned characters.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.budget = DECODE_BUDGET_PER_CHAR * len(text) + 10_000

    def decode(self, position: int) -> tuple[Any, int]:
        """The JSON value at ``position`` and where it ends; ValueError if invalid, too deep or out of budget."""
        window = 256
        while True:
            if self.budget <= 0:
                raise ValueError("the response holds too much malformed JSON to parse")
            chunk = self.text[position : position + window]
            self.budget -= len(chunk)
            complete = position + window >= len(self.text)
            try:
                value, end = _DECODER.raw_decode(chunk)
            except json.JSONDecodeError as exc:
                ran_out = exc.pos >= len(chunk) - 1 or exc.msg.startswith("Unterminated string")
                if complete or not ran_out:
                    raise
                window *= 2
                continue
            except RecursionError:
                raise ValueError("the JSON is nested too deeply") from None
            if not complete and end == len(chunk):
                # A number may continue past the window ("12" of "123"): decode a wider window.
                window *= 2
                continue
            if _depth(value) > MAX_JSON_DEPTH:
                raise ValueError(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
            return value, position + end


def _loads(text: str) -> Any:
    """``json.loads`` with the same depth limit as :class:`_Decoder` (for text already bounded in size)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _call_from_object(obj: Any) -> ToolCall | None:
    """A call from a decoded JSON object shaped like one, else None."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not ("arguments" in obj or "parameters" in obj):
        return None
    arguments = obj.get("arguments", obj.get("parameters"))
    if isinstance(arguments, str):
        try:
            arguments = _loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            return ToolCall(name, {}, f"its arguments string is not valid JSON ({exc})")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return ToolCall(name, {}, f"its arguments are not a JSON object but {type(arguments).__name__}")
    return ToolCall(name, arguments)


def _calls_from_value(value: Any) -> list[ToolCall]:
    items = value if isinstance(value, list) else [value]
    return [call for call in map(_call_from_object, items) if call is not None]


def _react_calls(text: str) -> list[ToolCall]:
    calls, decoder = [], _Decoder(text)
    for action in _ACTION.finditer(text):
        name = action.group(1).strip(" \t*`'\"")
        if not name:
            continue
        follow = _ACTION_INPUT.match(text, action.end())
        if follow is None:
            calls.append(ToolCall(name, {}, "no 'Action Input:' line follows it"))
            continue
        start = _skip_fence(text, follow.end())
        shown = clip(text[start : start + VALUE_CHARS + 1], VALUE_CHARS)
        try:
            arguments, _ = decoder.decode(start)
        except ValueError as exc:
            calls.append(ToolCall(name, {}, f"its Action Input is not valid JSON ({exc}): {shown}"))
            continue
        if not isinstance(arguments, dict):
            calls.append(ToolCall(name, {}, f"its Action Input is not a JSON object: {shown}"))
            continue
        calls.append(ToolCall(name, arguments))
    return calls


def _json_calls(text: str) -> tuple[list[ToolCall], str]:
    """Calls from JSON in the text, and the first decoding error of a call-looking object (or "")."""
    tagged = _TOOL_CALL_TAG.findall(text)
    if tagged:
        calls, errors = [], []
        for body in tagged:
            inner = body.strip()
            inner = inner[_skip_fence(inner, 0) :].removesuffix("```")
            try:
                value = _loads(inner)
            except ValueError as exc:
                shown = clip(body.strip()[: VALUE_CHARS + 1], VALUE_CHARS)
                errors.append(f"a <tool_call> block is not valid JSON ({exc}): {shown}")
                continue
            calls.extend(_calls_from_value(value))
        return calls, errors[0] if errors else ""

    calls, error, decoder = [], "", _Decoder(text)
    # The next "{" and "[" at or after ``position``, each searched again only once passed (linear overall).
    next_brace, next_bracket, position = text.find("{"), text.find("["), 0
    while True:
        if 0 <= next_brace < position:
            next_brace = text.find("{", position)
        if 0 <= next_bracket < position:
            next_bracket = text.find("[", position)
        starts = [i for i in (next_brace, next_bracket) if i >= 0]
        if not starts:
            return calls, error
        start = min(starts)
        try:
            value, end = decoder.decode(start)
        except ValueError as exc:
            if decoder.budget <= 0:
                return calls, error or str(exc)
            if not error and '"name"' in text[start : start + 200]:
                shown = clip(text[start : start + VALUE_CHARS + 1], VALUE_CHARS)
                error = f"a tool call is not valid JSON ({exc}): {shown}"
            position = start + 1
            continue
        calls.extend(_calls_from_value(value))
        position = end


def parse_tool_calls(text: str) -> tuple[list[ToolCall], str]:
    """All tool calls in a response (formats in the module docstring), and a JSON error if one blocked parsing."""
    answer = final_answer_text(text)
    react = _react_calls(answer)
    if react:
        return react, ""
    return _json_calls(answer)


def parse_reference_calls(ground_truth: Any) -> list[ToolCall]:
    """The reference calls of a ground truth: call object(s), their JSON text, or ReAct text."""
    value = ground_truth.tolist() if hasattr(ground_truth, "tolist") else ground_truth
    if isinstance(value, str):
        try:
            value = _loads(value)
        except ValueError:
            calls, error = parse_tool_calls(value)
            if error or not calls or any(call.error for call in calls):
                raise ValueError(f"tool-use ground_truth holds no valid call: {clip(str(ground_truth), 200)}") from None
            return calls
    calls = _calls_from_value(value)
    if not calls or any(call.error for call in calls):
        raise ValueError(f"tool-use ground_truth holds no valid call: {clip(repr(ground_truth), 200)}")
    return calls


_NUMERIC = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# Python refuses to convert longer digit strings to int (sys.set_int_max_str_digits): keep those as text.
_MAX_INT_DIGITS = 4000


def _normalize(value: Any) -> Any:
    """A value for comparison: ints stay exact (a 400-digit int never becomes a float), numeric strings
    become numbers (ASCII digits only), other strings are stripped and case-folded."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _NUMERIC.fullmatch(text) and len(text) <= _MAX_INT_DIGITS:
            return float(text) if any(c in text for c in ".eE") else int(text)
        return text.casefold()
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    if isinstance(value, dict):
        return {key: _normalize(item) for key, item in value.items()}
    return value


def _show(value: Any) -> str:
    return clip(json.dumps(value, ensure_ascii=False), VALUE_CHARS)


def _call_mismatches(number: int, got: ToolCall, want: ToolCall, reveal_answer: bool) -> list[str]:
    prefix = f"Call {number} ({got.name})"
    if got.error:
        return [f"{prefix}: {got.error}."]
    if got.name != want.name:
        expected = f"; the expected tool is {want.name!r}" if reveal_answer else ""
        return [f"{prefix}: wrong tool {got.name!r}{expected}."]
    problems = []
    missing = [key for key in want.arguments if key not in got.arguments]
    extra = [key for key in got.arguments if key not in want.arguments]
    if missing:
        problems.append(f"{prefix}: missing argument(s) {', '.join(map(repr, missing))}.")
    if extra:
        problems.append(f"{prefix}: unexpected argument(s) {', '.join(map(repr, extra))}.")
    for key in want.arguments:
        if key in got.arguments and _normalize(got.arguments[key]) != _normalize(want.arguments[key]):
            expected = f", expected {_show(want.arguments[key])}" if reveal_answer else ""
            problems.append(f"{prefix}: wrong value for argument {key!r}: got {_show(got.arguments[key])}{expected}.")
    return problems


def score_tool_use(
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    *,
    max_feedback_chars: int = DEFAULT_MAX_FEEDBACK_CHARS,
    reveal_answer: bool = False,
) -> ScoreResult:
    """1.0 iff the response makes exactly the reference calls, in order.

    Returns:
        ``feedback`` is ``""`` when all calls match, else one line per mismatch.
    """
    check_max_feedback_chars(max_feedback_chars)
    reference = parse_reference_calls(ground_truth)
    unscorable = unscorable_response(solution_str)
    if unscorable is not None:
        return ScoreResult(0.0, False, truncate_feedback(unscorable, max_feedback_chars))
    calls, parse_error = parse_tool_calls(solution_str)
    if not calls:
        feedback = f"No tool call could be parsed: {parse_error}" if parse_error else NO_CALL_FEEDBACK
        return ScoreResult(0.0, False, truncate_feedback(feedback, max_feedback_chars))

    problems = []
    if len(calls) != len(reference):
        problems.append(f"The response makes {len(calls)} tool call(s), expected {len(reference)}.")
    if parse_error:
        problems.append(f"Also, {parse_error}.")
    # Calls past the shorter list are covered by the count message above.
    for number, (got, want) in enumerate(zip(calls, reference, strict=False), start=1):
        problems.extend(_call_mismatches(number, got, want, reveal_answer))
    if not problems:
        return ScoreResult(1.0, True, "")
    return ScoreResult(0.0, False, truncate_feedback("\n".join(problems), max_feedback_chars))
