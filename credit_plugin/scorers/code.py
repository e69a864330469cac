"""Code scorer in the LiveCodeBench style: run the response's program on tests, feedback lists what failed.

Ground truth (a JSON string or the parsed object) in one of these layouts:

- ``{"inputs": [...], "outputs": [...]}``: stdin/stdout tests (strings).
- ``{"inputs": [[arg, ...], ...], "outputs": [value, ...], "fn_name": "f"}``: call tests, ``f(*args)``
  must return ``value``.
- LiveCodeBench's test list ``[{"input": str, "output": str, "testtype": "stdin" | "functional"}, ...]``,
  bare or as ``{"tests": [...], "fn_name": "f"}``. A functional test's input is one JSON value per line
  (the arguments) and its output the JSON of the return value.

For call tests without ``fn_name`` in the ground truth, it is read from ``extra_info["fn_name"]``,
``extra_info["func_name"]`` or LiveCodeBench's ``extra_info["metadata"]["func_name"]``. The callee is the
method of ``class Solution`` (LeetCode style) if defined, else the top-level function.

stdout matches when the stripped lines agree, or token by token with numbers within 1e-6.
"""

from __future__ import annotations

import json
import math
import re
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any

from credit_plugin.scorers.result import (
    DEFAULT_MAX_FEEDBACK_CHARS,
    ScoreResult,
    check_max_feedback_chars,
    clip,
    final_answer_text,
    truncate_feedback,
)
from credit_plugin.scorers.sandbox import RunOutcome, Sandbox, SandboxLimits

SCORE_MODES = ("all", "fraction")
FLOAT_TOLERANCE = 1e-6
FIELD_CHARS = 300
TRACEBACK_CHARS = 800

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("python", "py", "python3")


@dataclass(frozen=True)
class CodeCase:
    """One test: a stdin test (``args is None``) or a call test. ``expected`` is stdout text or a return value."""

    stdin: str | None
    args: list | None
    expected: Any


@dataclass(frozen=True)
class CodeTests:
    fn_name: str | None
    cases: list[CodeCase]


def _fn_name_from(extra_info: dict | None) -> str | None:
    info = extra_info or {}
    metadata = info.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            metadata = None
    return info.get("fn_name") or info.get("func_name") or (metadata or {}).get("func_name")


def parse_tests(ground_truth: Any, extra_info: dict | None = None) -> CodeTests:
    """Normalise a code ground truth (layouts in the module docstring) to :class:`CodeTests`."""
    data = ground_truth.tolist() if hasattr(ground_truth, "tolist") else ground_truth
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"code ground_truth is not JSON ({exc}): {clip(str(ground_truth), 200)}") from exc
    if isinstance(data, dict) and "inputs" in data and "outputs" in data:
        fn_name = data.get("fn_name") or _fn_name_from(extra_info)
        inputs, outputs = list(data["inputs"]), list(data["outputs"])
        if len(inputs) != len(outputs):
            raise ValueError(f"code ground_truth has {len(inputs)} inputs but {len(outputs)} outputs")
        if fn_name is None:
            return CodeTests(None, [CodeCase(str(i), None, str(o)) for i, o in zip(inputs, outputs, strict=True)])
        bad = [k for k, args in enumerate(inputs) if not isinstance(args, list)]
        if bad:
            raise ValueError(
                f"code ground_truth for fn_name={fn_name!r} needs a list of arguments per input; tests {bad}"
            )
        return CodeTests(fn_name, [CodeCase(None, i, o) for i, o in zip(inputs, outputs, strict=True)])

    if isinstance(data, dict) and isinstance(data.get("tests"), list):
        fn_name = data.get("fn_name") or data.get("func_name") or _fn_name_from(extra_info)
        tests = data["tests"]
    elif isinstance(data, list):
        fn_name, tests = _fn_name_from(extra_info), data
    else:
        raise ValueError(
            "code ground_truth must be {'inputs', 'outputs'[, 'fn_name']}, a LiveCodeBench test list or "
            f"{{'tests': [...], 'fn_name'}}; got {clip(repr(data), 200)}"
        )
    cases = []
    for k, test in enumerate(tests):
        if not isinstance(test, dict) or "input" not in test or "output" not in test:
            raise ValueError(f"code test {k} needs 'input' and 'output', got {clip(repr(test), 200)}")
        if test.get("testtype", "stdin") != "functional":
            cases.append(CodeCase(str(test["input"]), None, str(test["output"])))
            continue
        if fn_name is None:
            raise ValueError(f"code test {k} is functional but no fn_name is given (ground truth or extra_info)")
        try:
            args = [json.loads(line) for line in str(test["input"]).splitlines() if line.strip()]
            expected = json.loads(test["output"])
        except ValueError as exc:
            raise ValueError(f"functional code test {k} does not hold JSON values: {exc}") from exc
        cases.append(CodeCase(None, args, expected))
    return CodeTests(fn_name, cases)


def extract_code(response: str) -> tuple[str, bool]:
    """The program in a response and whether it came from a fenced block.

    Takes the last ```python block (also ``py``/``python3``), else the last untagged block, else the
    whole text after any reasoning. An unclosed last fence (a truncated response) counts as a block.
    """
    text = final_answer_text(response)
    blocks = _FENCE.findall(text)
    for wanted in (_PYTHON_TAGS, ("",)):
        chosen = [body for tag, body in blocks if tag.lower() in wanted]
        if chosen:
            return chosen[-1], True
    return text, False


def _float(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def stdout_matches(expected: str, got: str) -> bool:
    """Line-wise match ignoring surrounding whitespace, else token-wise with numbers within FLOAT_TOLERANCE."""
    if [line.strip() for line in expected.strip().splitlines()] == [line.strip() for line in got.strip().splitlines()]:
        return True
    want, have = expected.split(), got.split()
    if len(want) != len(have):
        return False
    for w, h in zip(want, have, strict=True):
        if w == h:
            continue
        fw, fh = _float(w), _float(h)
        if fw is None or fh is None or not math.isclose(fw, fh, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE):
            return False
    return True


def values_match(expected: Any, got: Any) -> bool:
    """Equality after a JSON round trip (tuples are lists), numbers within FLOAT_TOLERANCE if either is a float."""
    numbers = (int, float)
    if (
        isinstance(expected, numbers)
        and isinstance(got, numbers)
        and (isinstance(expected, float) or isinstance(got, float))
    ):
        return math.isclose(expected, got, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(values_match(e, g) for e, g in zip(expected, got, strict=True))
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(values_match(expected[k], got[k]) for k in expected)
    return expected == got


def _show_input(case: CodeCase, fn_name: str | None) -> str:
    if case.args is None:
        return f"Input:\n{clip(case.stdin.rstrip(), FIELD_CHARS) or '(empty)'}"
    call = ", ".join(json.dumps(arg) for arg in case.args)
    return f"Call: {fn_name}({clip(call, FIELD_CHARS)})"


def _failure_body(
    case: CodeCase, fn_name: str | None, outcome: RunOutcome, limits: SandboxLimits, timeout_s: float
) -> tuple[str, str]:
    """(headline, details) of one failed test. ``details`` excludes the input, to spot repeated errors."""
    if outcome.status == "timeout":
        return f"time limit exceeded ({timeout_s:.3g} s)", ""
    if outcome.status == "output_limit":
        return f"output limit exceeded (more than {limits.max_output_bytes} bytes written)", ""
    if outcome.status == "signal":
        number = -outcome.returncode
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        return f"the program was killed by signal {name}", clip(outcome.stderr, TRACEBACK_CHARS, keep="tail")
    if outcome.status == "error":
        details = clip(outcome.stderr.strip(), TRACEBACK_CHARS, keep="tail") or f"exit code {outcome.returncode}"
        if "MemoryError" in outcome.stderr:
            details += f"\n(the memory limit is {limits.memory_limit_mb} MiB)"
        return "runtime error", details
    if case.args is None:
        return "wrong answer", (
            f"Expected output:\n{clip(case.expected.rstrip(), FIELD_CHARS)}\n"
            f"Your output:\n{clip(outcome.stdout.rstrip(), FIELD_CHARS) or '(nothing)'}"
        )
    if not outcome.returned:
        return "runtime error", f"{fn_name}() did not return (the program exited first)"
    return "wrong answer", (
        f"Expected return value: {clip(json.dumps(case.expected), FIELD_CHARS)}\n"
        f"Your return value: {clip(json.dumps(outcome.value), FIELD_CHARS)}"
    )


def _passes(case: CodeCase, outcome: RunOutcome) -> bool:
    if outcome.status != "ok":
        return False
    if case.args is None:
        return stdout_matches(case.expected, outcome.stdout)
    return outcome.returned and values_match(case.expected, outcome.value)


def _compile_error(code: str) -> str | None:
    try:
        compile(code, "solution.py", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return None


def _check_options(score_mode: str, max_failures: int, total_timeout_s: float) -> None:
    if score_mode not in SCORE_MODES:
        raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
    if not isinstance(max_failures, int) or max_failures < 1:
        raise ValueError(f"max_failures must be a positive int, got {max_failures!r}")
    if not isinstance(total_timeout_s, (int, float)) or total_timeout_s <= 0:
        raise ValueError(f"total_timeout_s must be a positive number, got {total_timeout_s!r}")


def score_code(
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    *,
    max_feedback_chars: int = DEFAULT_MAX_FEEDBACK_CHARS,
    timeout_s: float = 6.0,
    total_timeout_s: float = 60.0,
    memory_limit_mb: int = 1024,
    max_output_bytes: int = 8 * 1024 * 1024,
    score_mode: str = "all",
    max_failures: int = 3,
) -> ScoreResult:
    """Run the response's program on every test in the sandbox, one fresh process per test.

    Args:
        timeout_s: wall-time limit per test. total_timeout_s: cap for all tests of this response;
            tests it leaves no time for count as failed.
        memory_limit_mb, max_output_bytes: per-process limits (see :mod:`credit_plugin.scorers.sandbox`).
        score_mode: ``all`` (1.0 only if every test passes, as LiveCodeBench) or ``fraction`` (share of
            tests passed; tests not run count as failed).
        max_failures: stop after this many failed tests (all of them are described in the feedback).
            A time-out also stops the run: later tests would most likely time out too, each costing
            ``timeout_s``.

    Returns:
        ``acc`` is True iff every test passed; ``feedback`` is ``""`` then, else it reports the failed
        tests (input, expected, got; the error; a time-out) or the compile error.
    """
    check_max_feedback_chars(max_feedback_chars)
    _check_options(score_mode, max_failures, total_timeout_s)
    limits = SandboxLimits(timeout_s=timeout_s, memory_limit_mb=memory_limit_mb, max_output_bytes=max_output_bytes)
    tests = parse_tests(ground_truth, extra_info)
    if not tests.cases:
        raise ValueError("code ground_truth holds no tests")

    def fail(feedback: str, passed: int = 0) -> ScoreResult:
        score = passed / len(tests.cases) if score_mode == "fraction" else 0.0
        return ScoreResult(score, False, truncate_feedback(feedback, max_feedback_chars))

    code, fenced = extract_code(solution_str)
    if not code.strip():
        return fail("The response contains no code to run.")
    error = _compile_error(code)
    if error is not None:
        where = "" if fenced else " (no ```python block was found, so the whole response was taken as code)"
        return fail(f"The code does not compile{where}:\n{clip(error, TRACEBACK_CHARS, keep='tail')}")

    deadline = time.monotonic() + total_timeout_s
    passed, failures, seen_details = 0, [], {}
    ran, timed_out = 0, False
    with Sandbox(code, limits) as box:
        for number, case in enumerate(tests.cases, start=1):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(failures) >= max_failures or timed_out:
                break
            run_timeout = min(timeout_s, remaining)
            if case.args is None:
                outcome = box.run(stdin=case.stdin, timeout_s=run_timeout)
            else:
                outcome = box.run(fn_name=tests.fn_name, args=case.args, timeout_s=run_timeout)
            ran += 1
            if _passes(case, outcome):
                passed += 1
                continue
            timed_out = outcome.status == "timeout"
            headline, details = _failure_body(case, tests.fn_name, outcome, limits, run_timeout)
            text = f"Test {number} failed: {headline}.\n{_show_input(case, tests.fn_name)}"
            if details and details in seen_details:
                text += f"\n(same error as test {seen_details[details]})"
            elif details:
                seen_details[details] = number
                text += f"\n{details}"
            failures.append(text)

    if passed == len(tests.cases):
        return ScoreResult(1.0, True, "")
    lines = [f"Passed {passed} of {len(tests.cases)} tests."]
    lines.extend(failures)
    not_run = len(tests.cases) - ran
    if not_run:
        if timed_out:
            reason = "after the time-out"
        elif len(failures) >= max_failures:
            reason = "after the failures above"
        else:
            reason = "as the time budget ran out"
        lines.append(f"{not_run} more tests were not run {reason}.")
    return fail("\n\n".join(lines), passed)
