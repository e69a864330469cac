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

stdout matches token by token (:func:`stdout_matches`): every token exactly, except that where the
expected token is a float, a number within ``float_tolerance`` matches. Return values match after a JSON
round trip: an expected int needs that int, an expected float any number within ``float_tolerance``.
Output that cannot be compared (it never raises here, but as a guard) is a wrong answer, not an error.

The program runs in :mod:`credit_plugin.scorers.sandbox` (option ``sandbox``); the expected outputs stay
in this process. Program output quoted in the feedback is clipped, escaped and fenced as program output.
"""

from __future__ import annotations

import json
import math
import re
import signal
import traceback
from dataclasses import dataclass
from typing import Any

from credit_plugin.scorers.result import (
    DEFAULT_MAX_FEEDBACK_CHARS,
    ScoreResult,
    check_max_feedback_chars,
    clip,
    final_answer_text,
    quote_program_output,
    truncate_feedback,
    unscorable_response,
)
from credit_plugin.scorers.sandbox import (
    BACKENDS,
    CaseInput,
    RunOutcome,
    SandboxError,
    SandboxLimits,
    check_backend,
    run_tests,
)

SCORE_MODES = ("all", "fraction")
DEFAULT_FLOAT_TOLERANCE = 1e-6
FIELD_CHARS = 300
TRACEBACK_CHARS = 800

_FENCE_TAG = re.compile(r"[ \t]*([A-Za-z0-9_+-]*)")
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


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(tag, body)`` of every ````` ``` ````` block, in one left-to-right pass (linear time on any text).

    A block opens at ````` ``` ````` followed by a tag and the rest of its line, and closes at the next
    ````` ``` ````` or the end of the text.
    """
    blocks, position = [], 0
    while (start := text.find("```", position)) >= 0:
        newline = text.find("\n", start + 3)
        if newline < 0:
            break
        tag = _FENCE_TAG.match(text, start + 3, newline).group(1)
        end = text.find("```", newline + 1)
        blocks.append((tag, text[newline + 1 : end if end >= 0 else len(text)]))
        if end < 0:
            break
        position = end + 3
    return blocks


def extract_code(response: str) -> tuple[str, bool]:
    """The program in a response and whether it came from a fenced block.

    Takes the last ```python block (also ``py``/``python3``), else the last untagged block, else the
    whole text after any reasoning. An unclosed last fence (a truncated response) counts as a block.
    """
    text = final_answer_text(response)
    blocks = _fenced_blocks(text)
    for wanted in (_PYTHON_TAGS, ("",)):
        chosen = [body for tag, body in blocks if tag.lower() in wanted]
        if chosen:
            return chosen[-1], True
    return text, False


# Numbers as the judge reads them: ASCII digits only, an optional sign, no "_", no inf/nan words.
_NUMBER_TOKEN = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def _float_token(token: str) -> float | None:
    """A finite float if ``token`` is an ASCII decimal number written as a float (a ``.`` or an exponent)."""
    if not _NUMBER_TOKEN.fullmatch(token) or not any(c in token for c in ".eE"):
        return None
    value = float(token)
    return value if math.isfinite(value) else None


def tokens_match(expected: str, got: str, float_tolerance: float) -> bool:
    """One output token against the expected one (rules in :func:`stdout_matches`)."""
    if expected == got:
        return True
    want = _float_token(expected)
    if want is None or not _NUMBER_TOKEN.fullmatch(got):
        return False
    have = float(got)
    return math.isfinite(have) and math.isclose(want, have, rel_tol=float_tolerance, abs_tol=float_tolerance)


def numbers_match(expected: float, got: float, float_tolerance: float) -> bool:
    """A returned number against the expected one: an expected int (or bool) needs exactly that int (bool);
    an expected float takes any finite int or float within ``float_tolerance`` (relative and absolute)."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    if isinstance(expected, int):
        return isinstance(got, int) and expected == got
    if isinstance(got, int) and abs(got) > 2**1023:
        return False  # beyond any finite float (float() of it would raise OverflowError)
    return math.isfinite(got) and math.isclose(expected, got, rel_tol=float_tolerance, abs_tol=float_tolerance)


def stdout_matches(expected: str, got: str, float_tolerance: float = DEFAULT_FLOAT_TOLERANCE) -> bool:
    """Whether a program's stdout is the expected output, token by token (LiveCodeBench's rule, made exact).

    Both are split on whitespace (line breaks and spacing do not matter) and must have the same number of
    tokens. A token matches when it is the same text; only where the *expected* token is a float (ASCII
    digits with a ``.`` or an exponent, e.g. ``0.5``, ``3.0``, ``1e-3``) does any ASCII number within
    ``float_tolerance`` match it (``0.50``, ``5e-1``, ``-0.0`` for ``0.0``, ``3`` for ``3.0``). So an
    expected integer takes only itself: not ``3.0``, ``+3``, ``-0`` for ``0``, ``1_000``, ``1e9``,
    ``998244000.0``, nor Unicode digits (``²``, ``٣``); ``inf``, ``infinity`` and ``nan`` are words, equal
    only to themselves. Never raises on any output.
    """
    want, have = expected.split(), got.split()
    return len(want) == len(have) and all(tokens_match(w, h, float_tolerance) for w, h in zip(want, have, strict=True))


def values_match(expected: Any, got: Any, float_tolerance: float = DEFAULT_FLOAT_TOLERANCE) -> bool:
    """Equality after a JSON round trip (tuples are lists), numbers by :func:`numbers_match`."""
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(got, numbers):
        return numbers_match(expected, got, float_tolerance)
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(
            values_match(e, g, float_tolerance) for e, g in zip(expected, got, strict=True)
        )
    if isinstance(expected, dict) and isinstance(got, dict):
        same = expected.keys() == got.keys()
        return same and all(values_match(expected[k], got[k], float_tolerance) for k in expected)
    return expected == got


def _show_input(case: CodeCase, fn_name: str | None) -> str:
    if case.args is None:
        return f"Input:\n{clip(case.stdin.rstrip(), FIELD_CHARS) or '(empty)'}"
    call = ", ".join(json.dumps(arg) for arg in case.args)
    return f"Call: {fn_name}({clip(call, FIELD_CHARS)})"


def _failure_body(case: CodeCase, fn_name: str | None, outcome: RunOutcome, limits: SandboxLimits) -> tuple[str, str]:
    """(headline, details) of one failed test. ``details`` excludes the input, to spot repeated errors."""
    if outcome.status == "timeout":
        return f"time limit exceeded ({limits.timeout_s:.3g} s)", ""
    if outcome.status == "output_limit":
        return f"output limit exceeded (more than {limits.max_output_bytes} bytes written)", ""
    if outcome.status == "signal":
        number = -outcome.returncode
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        return f"the program was killed by signal {name}", _quoted_stderr(outcome)
    if outcome.status == "error":
        details = _quoted_stderr(outcome) or f"exit code {outcome.returncode}"
        if "MemoryError" in outcome.stderr[-TRACEBACK_CHARS:]:
            details += f"\n(the memory limit is {limits.memory_limit_mb} MiB)"
        return "runtime error", details
    if case.args is None:
        return "wrong answer", (
            f"Expected output:\n{clip(case.expected.rstrip(), FIELD_CHARS)}\n"
            f"Your output:\n{quote_program_output(outcome.stdout.rstrip(), FIELD_CHARS)}"
        )
    if not outcome.returned:
        return "runtime error", f"{fn_name}() did not return (the program exited first)"
    if outcome.status == "bad_value":
        return "wrong answer", (
            f"Expected return value: {clip(json.dumps(case.expected), FIELD_CHARS)}\n"
            "Your return value could not be read back (an integer over 4300 digits, or nested too deeply)."
        )
    return "wrong answer", (
        f"Expected return value: {clip(json.dumps(case.expected), FIELD_CHARS)}\n"
        f"Your return value:\n{quote_program_output(json.dumps(outcome.value), FIELD_CHARS)}"
    )


def _quoted_stderr(outcome: RunOutcome) -> str:
    text = outcome.stderr.strip()
    return quote_program_output(text, TRACEBACK_CHARS, keep="tail") if text else ""


def _passes(case: CodeCase, outcome: RunOutcome, float_tolerance: float) -> bool:
    """Whether the test passed. Whatever the program wrote, this never raises: output that cannot be
    compared (e.g. a return value too deep to walk) counts as a wrong answer."""
    if outcome.status != "ok":
        return False
    try:
        if case.args is None:
            return stdout_matches(case.expected, outcome.stdout, float_tolerance)
        return outcome.returned and values_match(case.expected, outcome.value, float_tolerance)
    except (ValueError, OverflowError, RecursionError, TypeError, MemoryError):
        return False


def _compile_error(code: str) -> str | None:
    """The compile error of ``code`` (bounded by the response size cap before it gets here), or None."""
    try:
        compile(code, "solution.py", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return None


def check_code_options(
    *,
    score_mode: str = "all",
    max_failures: int = 3,
    total_timeout_s: float = 60.0,
    float_tolerance: float = DEFAULT_FLOAT_TOLERANCE,
    sandbox: str = "bwrap",
    sandbox_fusion_url: str | None = None,
    probe: bool = True,
) -> None:
    """ValueError naming the first invalid option; :class:`SandboxUnavailableError` if ``sandbox`` cannot run
    (checked only with ``probe``)."""
    if score_mode not in SCORE_MODES:
        raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
    if not isinstance(max_failures, int) or max_failures < 1:
        raise ValueError(f"max_failures must be a positive int, got {max_failures!r}")
    if not isinstance(total_timeout_s, (int, float)) or total_timeout_s <= 0:
        raise ValueError(f"total_timeout_s must be a positive number, got {total_timeout_s!r}")
    if not isinstance(float_tolerance, (int, float)) or isinstance(float_tolerance, bool) or float_tolerance < 0:
        raise ValueError(f"float_tolerance must be a number >= 0, got {float_tolerance!r}")
    if sandbox not in BACKENDS:
        raise ValueError(f"sandbox must be one of {BACKENDS}, got {sandbox!r}")
    if (sandbox == "sandbox_fusion") != (sandbox_fusion_url is not None):
        raise ValueError("sandbox_fusion_url is needed with sandbox=sandbox_fusion and only there")
    if probe:
        check_backend(sandbox, sandbox_fusion_url)


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
    max_processes: int = 16,
    score_mode: str = "all",
    max_failures: int = 3,
    float_tolerance: float = DEFAULT_FLOAT_TOLERANCE,
    sandbox: str = "bwrap",
    sandbox_fusion_url: str | None = None,
) -> ScoreResult:
    """Run the response's program on every test in one sandbox, one fresh process per test.

    Args:
        timeout_s: wall-time limit per test. total_timeout_s: cap for all tests of this response;
            tests it leaves no time for count as failed. A time-out also stops the run: later tests
            would most likely time out too, each costing ``timeout_s``.
        memory_limit_mb, max_output_bytes, max_processes: per-test limits (see
            :mod:`credit_plugin.scorers.sandbox`).
        score_mode: ``all`` (1.0 only if every test passes, as LiveCodeBench) or ``fraction`` (share of
            tests passed; tests not run count as failed).
        max_failures: how many failed tests the feedback describes; the rest are counted.
        float_tolerance: relative and absolute tolerance, applied only where the expected token or
            value is a float; an expected integer needs exactly that integer (:func:`stdout_matches`).
        sandbox, sandbox_fusion_url: the isolation backend (``bwrap``, ``sandbox_fusion`` with its URL,
            or ``unsafe_local``); see :mod:`credit_plugin.scorers.sandbox`.

    Returns:
        ``acc`` is True iff every test passed; ``feedback`` is ``""`` then, else it reports the failed
        tests (input, expected, got; the error; a time-out) or the compile error.
    """
    check_max_feedback_chars(max_feedback_chars)
    check_code_options(
        score_mode=score_mode,
        max_failures=max_failures,
        total_timeout_s=total_timeout_s,
        float_tolerance=float_tolerance,
        sandbox=sandbox,
        sandbox_fusion_url=sandbox_fusion_url,
    )
    limits = SandboxLimits(
        timeout_s=timeout_s,
        memory_limit_mb=memory_limit_mb,
        max_output_bytes=max_output_bytes,
        max_processes=max_processes,
    )
    tests = parse_tests(ground_truth, extra_info)
    if not tests.cases:
        raise ValueError("code ground_truth holds no tests")

    def fail(feedback: str, passed: int = 0) -> ScoreResult:
        score = passed / len(tests.cases) if score_mode == "fraction" else 0.0
        return ScoreResult(score, False, truncate_feedback(feedback, max_feedback_chars))

    unscorable = unscorable_response(solution_str)
    if unscorable is not None:
        return fail(unscorable)
    code, fenced = extract_code(solution_str)
    if not code.strip():
        return fail("The response contains no code to run.")
    error = _compile_error(code)
    if error is not None:
        where = "" if fenced else " (no ```python block was found, so the whole response was taken as code)"
        return fail(f"The code does not compile{where}:\n{clip(error, TRACEBACK_CHARS, keep='tail')}")

    inputs = [CaseInput(stdin=case.stdin, args=case.args) for case in tests.cases]
    try:
        outcomes = run_tests(
            code, inputs, tests.fn_name, limits, total_timeout_s, sandbox=sandbox, sandbox_fusion_url=sandbox_fusion_url
        )
    except SandboxError as exc:
        # The backend was checked at start-up, so this is the program's doing (it killed the test runner,
        # forged its report) or a one-off failure; either way this response gets no credit.
        return fail(f"The test run ended abnormally ({exc}); did the program kill or tamper with other processes?")
    passed, failures, failed, seen_details = 0, [], 0, {}
    for number, (case, outcome) in enumerate(zip(tests.cases, outcomes, strict=False), start=1):
        if _passes(case, outcome, float_tolerance):
            passed += 1
            continue
        failed += 1
        if len(failures) >= max_failures:
            continue
        try:
            headline, details = _failure_body(case, tests.fn_name, outcome, limits)
        except (ValueError, OverflowError, RecursionError, TypeError):
            # The program's value cannot even be shown: still its wrong answer, never a scorer error.
            headline, details = "wrong answer", "Your output could not be shown."
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
    if failed > len(failures):
        lines.append(f"{failed - len(failures)} more tests failed.")
    not_run = len(tests.cases) - len(outcomes)
    if not_run:
        timed_out = bool(outcomes) and outcomes[-1].status == "timeout"
        reason = "after the time-out" if timed_out else "as the time budget ran out"
        lines.append(f"{not_run} more tests were not run {reason}.")
    return fail("\n\n".join(lines), passed)
