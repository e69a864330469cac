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
)

_ACTION = re.compile(r"^[ \t*]*Action[ \t*]*:[ \t*]*(.+?)[ \t*]*$", re.MULTILINE)
_ACTION_INPUT = re.compile(r"\s*[*]*Action[ \t]+Input[ \t*]*:[ \t*]*")
_TOOL_CALL_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_DECODER = json.JSONDecoder()
VALUE_CHARS = 200

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


def _strip_fence(text: str) -> str:
    return re.sub(r"^\s*```(?:json)?\s*", "", text)


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
            arguments = json.loads(arguments) if arguments.strip() else {}
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
    calls = []
    for action in _ACTION.finditer(text):
        name = action.group(1).strip("`'\" ")
        follow = _ACTION_INPUT.match(text, action.end())
        if follow is None:
            calls.append(ToolCall(name, {}, "no 'Action Input:' line follows it"))
            continue
        rest = _strip_fence(text[follow.end() :])
        try:
            arguments, _ = _DECODER.raw_decode(rest)
        except ValueError as exc:
            calls.append(ToolCall(name, {}, f"its Action Input is not valid JSON ({exc}): {clip(rest, VALUE_CHARS)}"))
            continue
        if not isinstance(arguments, dict):
            calls.append(ToolCall(name, {}, f"its Action Input is not a JSON object: {clip(rest, VALUE_CHARS)}"))
            continue
        calls.append(ToolCall(name, arguments))
    return calls


def _json_calls(text: str) -> tuple[list[ToolCall], str]:
    """Calls from JSON in the text, and the first decoding error of a call-looking object (or "")."""
    tagged = _TOOL_CALL_TAG.findall(text)
    if tagged:
        calls, errors = [], []
        for body in tagged:
            try:
                value = json.loads(_strip_fence(body).strip().removesuffix("```"))
            except ValueError as exc:
                errors.append(f"a <tool_call> block is not valid JSON ({exc}): {clip(body.strip(), VALUE_CHARS)}")
                continue
            calls.extend(_calls_from_value(value))
        return calls, errors[0] if errors else ""

    calls, error, position = [], "", 0
    while True:
        starts = [i for i in (text.find("{", position), text.find("[", position)) if i >= 0]
        if not starts:
            return calls, error
        start = min(starts)
        try:
            value, end = _DECODER.raw_decode(text, start)
        except ValueError as exc:
            if not error and '"name"' in text[start : start + 200]:
                error = f"a tool call is not valid JSON ({exc}): {clip(text[start:], VALUE_CHARS)}"
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
            value = json.loads(value)
        except ValueError:
            calls, error = parse_tool_calls(value)
            if error or not calls or any(call.error for call in calls):
                raise ValueError(f"tool-use ground_truth holds no valid call: {clip(str(ground_truth), 200)}") from None
            return calls
    calls = _calls_from_value(value)
    if not calls or any(call.error for call in calls):
        raise ValueError(f"tool-use ground_truth holds no valid call: {clip(repr(ground_truth), 200)}")
    return calls


def _normalize(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
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
