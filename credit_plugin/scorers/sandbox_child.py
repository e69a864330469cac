"""Runner inside the code sandbox: runs one program on each test input, one forked process per test.

Started by :mod:`credit_plugin.scorers.sandbox` as ``python -I -S -c <this file's text>`` inside the
isolation layer (bubblewrap: own pid, mount, network and user namespaces). Standard library only.

stdin holds one JSON spec: ``code``, ``fn_name`` (None: stdin/stdout program), ``tests`` (a list of
``{"stdin": str | None, "args": list | None}``), ``timeout_s``, ``total_timeout_s``, ``memory_bytes``,
``fsize_bytes``, ``nproc`` (None: not set), ``report_bytes``, ``tmp_dir`` (where test folders go) and
``own_pid_namespace`` (whether the runner is alone in its pid namespace). Expected outputs are never
sent: comparing happens outside the sandbox. stdout gets one JSON line per test that ran, in order:
``timed_out``, ``returncode``, ``flooded``, ``stdout``, ``stderr`` (its tail) and ``value`` (the call's
return value as JSON text, or None if it did not return), then ``{"done": true}``. Testing stops after
the first time-out or when ``total_timeout_s`` is spent.

The runner shares its uid with the program, so the program can read or kill it; that gains nothing:
the runner holds only the program and its inputs. Between tests the runner kills every other process
of the pid namespace, so each test starts alone and nothing outlives its test. Without a pid namespace
(the unsafe local mode, a remote sandbox service) it kills each test's process group instead, which a
program can leave with ``setsid``.
"""

import builtins
import json
import os
import resource
import select
import signal
import sys
import time

SOLUTION_FILE = "solution.py"
STDERR_TAIL_BYTES = 64 * 1024


def _set_limits(spec: dict, cpu_s: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (spec["memory_bytes"], spec["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize_bytes"], spec["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if spec["nproc"] is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))


def _jsonable(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


def _report_exception(exc: BaseException, namespace: dict, source: str) -> None:
    """Print the traceback restricted to the program's own frames to stderr."""
    # The program's globals may hold what exhausted the memory limit; free them before formatting.
    namespace.clear()
    try:
        # Imported only here: the runner starts once per response, and these imports cost more than a test.
        import linecache
        import traceback

        linecache.cache[SOLUTION_FILE] = (len(source), None, source.splitlines(True), SOLUTION_FILE)
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == SOLUTION_FILE]
        text = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
        text += "".join(traceback.format_exception_only(type(exc), exc))
    except MemoryError:
        text = f"{type(exc).__name__}\n"
    sys.stderr.write(text)


def _call(namespace: dict, fn_name: str, args: list):
    solution_cls = namespace.get("Solution")
    if isinstance(solution_cls, type) and hasattr(solution_cls, fn_name):
        target = getattr(solution_cls(), fn_name)
    elif callable(namespace.get(fn_name)):
        target = namespace[fn_name]
    else:
        raise NameError(f"the code defines neither a function {fn_name}() nor a class Solution with that method")
    return target(*args)


def _test_process(spec: dict, test: dict, folder: str, cpu_s: int) -> int:
    """Body of one test's process (after fork): redirect stdio to files, apply the limits, run the program."""
    for fd, name, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY), (2, "stderr", os.O_WRONLY)):
        opened = os.open(os.path.join(folder, name), flags | (os.O_CREAT | os.O_TRUNC if fd else 0), 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    os.closerange(3, 1024)
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    os.chdir(os.path.join(folder, "work"))
    if not spec["own_pid_namespace"]:
        os.setsid()
    _set_limits(spec, cpu_s)

    source, fn_name = spec["code"], spec["fn_name"]
    # A call test must not run the program's ``if __name__ == "__main__":`` block (it would read stdin).
    namespace = {"__name__": "__main__" if fn_name is None else "solution", "__builtins__": builtins}
    try:
        exec(compile(source, SOLUTION_FILE, "exec"), namespace)
        if fn_name is not None:
            value = _call(namespace, fn_name, test["args"])
            with open(os.path.join(folder, "result.json"), "w", encoding="utf-8") as f:
                json.dump(value, f, default=_jsonable)
    except SystemExit as exc:
        sys.stdout.flush()
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        sys.stderr.write(f"{code}\n")
        return 1
    except BaseException as exc:
        sys.stdout.flush()
        _report_exception(exc, namespace, source)
        return 1
    sys.stdout.flush()
    return 0


def _others() -> list[int]:
    """Every live process of this pid namespace except pid 1 (bubblewrap's init) and this runner."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, os.getpid()):
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    state = f.read().rpartition(b")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                pids.append(int(name))
    return pids


def _kill_others() -> None:
    """SIGKILL every other process until none is left (a fork loop cannot outrun it: nproc bounds it)."""
    for _ in range(1000):
        pids = _others()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _read(path: str, max_bytes: int, tail: bool = False) -> str:
    try:
        with open(path, "rb") as f:
            if tail:
                f.seek(max(0, os.fstat(f.fileno()).st_size - max_bytes))
            return f.read(max_bytes).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _run_one(spec: dict, index: int, test: dict, timeout_s: float) -> dict:
    folder = os.path.join(spec["tmp_dir"], f"test_{index}")
    os.makedirs(os.path.join(folder, "work"))
    with open(os.path.join(folder, "stdin"), "w", encoding="utf-8") as f:
        f.write(test["stdin"] or "")
    cpu_s = int(timeout_s) + 1
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _test_process(spec, test, folder, cpu_s)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:
                    pass
            os._exit(code if isinstance(code, int) and 0 <= code < 256 else 1)
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    timed_out = not poller.poll(max(1, int(timeout_s * 1000)))
    # The test's process is unreaped here (a zombie at worst), so its id still names its process group.
    if not spec["own_pid_namespace"]:
        _kill_group(pid)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(pidfd)
    if spec["own_pid_namespace"]:
        _kill_others()
    fsize = spec["fsize_bytes"]
    sizes = [os.stat(os.path.join(folder, name)).st_size for name in ("stdout", "stderr")]
    result_path = os.path.join(folder, "result.json")
    report = {
        "timed_out": timed_out,
        "returncode": os.waitstatus_to_exitcode(status),
        "flooded": max(sizes) >= fsize,
        "stdout": _read(os.path.join(folder, "stdout"), fsize),
        "stderr": _read(os.path.join(folder, "stderr"), STDERR_TAIL_BYTES, tail=True),
        "value": _read(result_path, fsize) if os.path.exists(result_path) else None,
    }
    return report


def main() -> int:
    # Started with -S (no site: faster, and no site-packages in reach); programs still expect exit() and quit().
    import _sitebuiltins

    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    spec = json.loads(sys.stdin.buffer.read())
    report_bytes = spec["report_bytes"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (report_bytes, report_bytes))
    if not spec["own_pid_namespace"]:
        # A shared /tmp (a remote sandbox service): a folder of this run's own, removed at the end.
        spec["tmp_dir"] = os.path.join(spec["tmp_dir"], f"credit_runner_{os.getpid()}_{time.time_ns()}")
        os.mkdir(spec["tmp_dir"], 0o700)
    deadline = time.monotonic() + spec["total_timeout_s"]
    try:
        for index, test in enumerate(spec["tests"]):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            report = _run_one(spec, index, test, min(spec["timeout_s"], remaining))
            sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
            sys.stdout.flush()
            if report["timed_out"]:
                break
    finally:
        if not spec["own_pid_namespace"]:
            import shutil

            shutil.rmtree(spec["tmp_dir"], ignore_errors=True)
    sys.stdout.write(json.dumps({"done": True}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
