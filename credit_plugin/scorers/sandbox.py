"""Run untrusted Python programs in a throwaway subprocess sandbox.

Layers, each enforced on its own so that one failing open does not open the sandbox:

- ``python -I`` (isolated mode: no ``PYTHON*`` variables, no user site, script directory not on the
  path), a minimal environment (nothing inherited, so no credentials), and a fresh working directory
  per run, removed afterwards.
- Resource limits ``RLIMIT_CPU``, ``RLIMIT_AS`` (memory), ``RLIMIT_FSIZE`` (stdout/stderr go to files,
  so this also caps the output) and ``RLIMIT_CORE``, set by the child itself before the candidate's code
  is compiled. Not in ``preexec_fn``: the reward manager calls this from executor threads, and
  ``preexec_fn`` is documented as unsafe in the presence of threads (the forked child may deadlock).
  ``RLIMIT_NPROC`` is not set: it counts every process and thread of the user, whose other processes
  (Ray, torch) run hundreds, and root ignores it; process creation is blocked by the audit hook instead.
- No network: the child runs in a new network namespace (``unshare --net``, with ``--map-root-user``
  when not root) when the machine allows it (probed once), and an audit hook in the child raises
  ``PermissionError`` on socket creation/connection, process creation and signals.
- Wall time: the child leads its own session; on timeout the whole process group gets ``SIGKILL``.

This contains ordinary mistakes and accidental harm (infinite loops, memory hogs, output floods, stray
network calls); it is not a security boundary against deliberately malicious native code (``ctypes``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHILD_SCRIPT = str(Path(__file__).with_name("sandbox_child.py"))


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. ``timeout_s`` is wall time; the CPU limit is derived from it."""

    timeout_s: float = 6.0
    memory_limit_mb: int = 1024
    max_output_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_limit_mb", "max_output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"sandbox option {name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class RunOutcome:
    """How one run ended.

    Attributes:
        status: ``ok`` (exit 0), ``error`` (non-zero exit, traceback in ``stderr``), ``timeout`` (wall or
            CPU time limit), ``output_limit`` (stdout or stderr reached ``max_output_bytes``) or ``signal``
            (killed by another signal, e.g. a crash).
        stdout, stderr: decoded output, at most ``max_output_bytes`` each.
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


@functools.cache
def network_isolation_prefix() -> tuple[str, ...]:
    """The command prefix that puts the child in a new, empty network namespace, or ``()`` if impossible here."""
    unshare = shutil.which("unshare")
    if unshare is None:
        logger.warning("sandbox: `unshare` not found; network is blocked by the in-process audit hook only")
        return ()
    prefix = (unshare, "--net") if os.geteuid() == 0 else (unshare, "--net", "--map-root-user")
    try:
        probe = subprocess.run([*prefix, sys.executable, "-I", "-c", "pass"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("sandbox: `%s` failed (%s); network is blocked by the audit hook only", " ".join(prefix), exc)
        return ()
    if probe.returncode != 0:
        logger.warning(
            "sandbox: `%s` is not permitted here (%s); network is blocked by the audit hook only",
            " ".join(prefix),
            probe.stderr.decode(errors="replace").strip(),
        )
        return ()
    return prefix


def _child_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        # BLAS thread pools reserve virtual memory per thread and would trip RLIMIT_AS on import.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _read_capped(path: Path, max_bytes: int) -> str:
    with open(path, "rb") as f:
        return f.read(max_bytes).decode("utf-8", errors="replace")


class Sandbox:
    """One program, run any number of times (one test each) in fresh directories; use as a context manager.

    Example::

        with Sandbox(code, SandboxLimits(timeout_s=2)) as box:
            outcome = box.run(stdin="1 2\\n")
    """

    def __init__(self, code: str, limits: SandboxLimits) -> None:
        self.code = code
        self.limits = limits
        self._root: Path | None = None
        self._runs = 0

    def __enter__(self) -> Sandbox:
        self._root = Path(tempfile.mkdtemp(prefix="credit_sandbox_"))
        (self._root / "solution.py").write_text(self.code, encoding="utf-8")
        return self

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self._root, ignore_errors=True)
        self._root = None

    def run(
        self, *, stdin: str = "", fn_name: str | None = None, args: list | None = None, timeout_s: float | None = None
    ) -> RunOutcome:
        """Run the program once: as a stdin/stdout program, or (``fn_name``) call ``fn_name(*args)``.

        ``timeout_s`` overrides the wall-time limit for this run (the caller's remaining budget).
        """
        if self._root is None:
            raise RuntimeError("Sandbox.run outside its `with` block")
        timeout = self.limits.timeout_s if timeout_s is None else min(timeout_s, self.limits.timeout_s)
        self._runs += 1
        io_dir = self._root / f"io_{self._runs}"
        workdir = self._root / f"work_{self._runs}"
        io_dir.mkdir()
        workdir.mkdir()
        try:
            return self._run(io_dir, workdir, stdin, fn_name, args or [], timeout)
        finally:
            shutil.rmtree(io_dir, ignore_errors=True)
            shutil.rmtree(workdir, ignore_errors=True)

    def _run(
        self, io_dir: Path, workdir: Path, stdin: str, fn_name: str | None, args: list, timeout: float
    ) -> RunOutcome:
        limits = self.limits
        spec = {
            "code_path": str(self._root / "solution.py"),
            "fn_name": fn_name,
            "args": args,
            "result_path": str(io_dir / "result.json"),
            "cpu_s": math.ceil(timeout) + 1,
            "memory_bytes": int(limits.memory_limit_mb * 1024 * 1024),
            "fsize_bytes": int(limits.max_output_bytes),
        }
        (io_dir / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        (io_dir / "stdin.txt").write_text(stdin, encoding="utf-8")
        command = [*network_isolation_prefix(), sys.executable, "-I", CHILD_SCRIPT, str(io_dir / "spec.json")]
        with (
            open(io_dir / "stdin.txt", "rb") as fin,
            open(io_dir / "stdout.txt", "wb") as fout,
            open(io_dir / "stderr.txt", "wb") as ferr,
        ):
            proc = subprocess.Popen(
                command,
                stdin=fin,
                stdout=fout,
                stderr=ferr,
                cwd=workdir,
                env=_child_env(str(workdir)),
                start_new_session=True,
            )
            try:
                returncode = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                # Kill the group while the leader is unreaped, so its id cannot name another group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                returncode = proc.wait()
                timed_out = True

        stdout = _read_capped(io_dir / "stdout.txt", limits.max_output_bytes)
        stderr = _read_capped(io_dir / "stderr.txt", limits.max_output_bytes)
        # CPython ignores SIGXFSZ, so hitting RLIMIT_FSIZE shows as a write error (EFBIG), not a signal.
        flooded = any(
            (io_dir / name).stat().st_size >= limits.max_output_bytes for name in ("stdout.txt", "stderr.txt")
        )
        if timed_out or returncode == -signal.SIGXCPU:
            status = "timeout"
        elif flooded or returncode == -signal.SIGXFSZ:
            status = "output_limit"
        elif returncode < 0:
            status = "signal"
        elif returncode > 0:
            status = "error"
        else:
            status = "ok"

        result_path = io_dir / "result.json"
        if status == "ok" and fn_name is not None and result_path.exists():
            try:
                value = json.loads(_read_capped(result_path, limits.max_output_bytes))
            except ValueError:
                return RunOutcome("error", stdout, stderr + "\nthe return value could not be read back", returncode)
            return RunOutcome(status, stdout, stderr, returncode, value=value, returned=True)
        return RunOutcome(status, stdout, stderr, returncode)
