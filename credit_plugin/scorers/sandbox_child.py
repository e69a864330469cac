"""Runner inside the code sandbox: runs one program on each test input, one forked process per test.

Started by :mod:`credit_plugin.scorers.sandbox` as ``python -I -S -c <this file's text>`` inside the
isolation layer (bubblewrap: own pid, mount, network and user namespaces, the runner as pid 1).
Standard library only.

stdin holds one JSON spec: ``code``, ``fn_name`` (None: stdin/stdout program), ``tests`` (a list of
``{"stdin": str | None, "args": list | None}``), ``timeout_s``, ``total_timeout_s``, ``memory_bytes``,
``fsize_bytes``, ``nproc`` (None: not set), ``report_bytes``, ``tmp_dir`` (where test folders go),
``own_pid_namespace`` (whether the runner is pid 1 of its own pid namespace) and ``encoding`` (``raw`` or
``base64``). Expected outputs are never sent: comparing happens outside the sandbox. stdout gets one
record per test that ran, in order: a JSON header line (``timed_out``, ``returncode``, ``flooded``,
``sizes``: bytes of stdout, of the stderr tail and of the call's return value as JSON, -1 if it did not
return), then those bytes unescaped (``base64``: as one base64 line); at the end the header
``{"done": true}``. Testing stops after the first time-out or when ``total_timeout_s`` is spent.

As pid 1 of the namespace the runner cannot be killed or stopped by the program (the kernel drops
signals from inside to an init without a handler), and it makes itself non-dumpable, so the program
cannot ptrace it or take its descriptors. It opens each test's files itself (in an unpredictable folder)
and reads them through its own descriptors, bounded. Between tests it kills every other process of the
namespace with ``kill(-1)`` and reaps until none is left, so each test starts alone and nothing
outlives its test. Without a pid namespace (the unsafe local mode, a remote sandbox service) it kills
each test's process group instead, which a program can leave with ``setsid``.
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


def _set_dumpable(flag: int) -> None:
    """``prctl(PR_SET_DUMPABLE, flag)``: a non-dumpable runner cannot be ptraced, nor its fds and memory read.

    Through ctypes (standard library); where the interpreter has no ctypes the runner stays dumpable, which
    gains a program nothing beyond its own inputs (the runner holds no expected output).
    """
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, flag, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass


def _test_process(spec: dict, test: dict, fds: dict, cpu_s: int, work: str) -> int:
    """Body of one test's process (after fork): the runner's files on fds 0-3, the limits, then the program."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr"), (3, "result")):
        os.dup2(fds[name], fd)
    # The runner's own files (its report: stdout) are closed; fd 3 takes a call's return value.
    os.closerange(4, 1 << 16)
    if spec["own_pid_namespace"]:
        _set_dumpable(1)
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    os.chdir(work)
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
            text = json.dumps(value, default=_jsonable).encode()
            os.lseek(3, 0, os.SEEK_SET)
            os.ftruncate(3, 0)
            while text:
                text = text[os.write(3, text) :]
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


def _kill_all() -> None:
    """As pid 1 of the sandbox's pid namespace: SIGKILL every other process and reap it, until none is left.

    ``kill(-1)`` reaches every thread group of the namespace, also one whose leader is already a zombie
    while its other threads run; every orphan is re-parented to this runner, so when ``waitpid`` finds
    no child the namespace is empty.
    """
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _read_fd(fd: int, max_bytes: int, tail: bool = False) -> bytes:
    """At most ``max_bytes`` of a file through the runner's own descriptor (the program cannot swap it)."""
    size = os.fstat(fd).st_size
    offset = max(0, size - max_bytes) if tail else 0
    chunks, wanted = [], min(size - offset, max_bytes)
    while wanted > 0:
        chunk = os.pread(fd, wanted, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        wanted -= len(chunk)
    return b"".join(chunks)


def _run_one(spec: dict, index: int, test: dict, timeout_s: float) -> tuple[dict, bytes]:
    """Run one test; its report header and payload (stdout, stderr tail, return value: sizes in the header)."""
    # An unpredictable folder: the program of an earlier test cannot plant files (a FIFO, a link) in it.
    folder = os.path.join(spec["tmp_dir"], f"test_{index}_{os.urandom(8).hex()}")
    work = os.path.join(folder, "work")
    os.makedirs(work)
    fds = {}
    for name in ("stdin", "stdout", "stderr", "result"):
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fds[name] = os.open(os.path.join(folder, name), flags, 0o600)
    data = (test["stdin"] or "").encode("utf-8", errors="surrogatepass")
    while data:
        data = data[os.write(fds["stdin"], data) :]
    os.lseek(fds["stdin"], 0, os.SEEK_SET)
    cpu_s = int(timeout_s) + 1
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _test_process(spec, test, fds, cpu_s, work)
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
        _kill_all()
    fsize = spec["fsize_bytes"]
    sizes = [os.fstat(fds[name]).st_size for name in ("stdout", "stderr")]
    stdout = _read_fd(fds["stdout"], fsize)
    stderr = _read_fd(fds["stderr"], STDERR_TAIL_BYTES, tail=True)
    value = _read_fd(fds["result"], fsize)
    for fd in fds.values():
        os.close(fd)
    header = {
        "timed_out": timed_out,
        "returncode": os.waitstatus_to_exitcode(status),
        "flooded": max(sizes) >= fsize,
        "sizes": [len(stdout), len(stderr), len(value) if value else -1],
    }
    return header, stdout + stderr + value


def _emit(header: dict, payload: bytes, encoding: str) -> None:
    """One framed record on stdout: a JSON header line, then the payload (raw bytes, or one base64 line)."""
    out = sys.stdout.buffer
    out.write(json.dumps(header).encode() + b"\n")
    if encoding == "base64":
        import base64

        out.write(base64.b64encode(payload) + b"\n")
    else:
        out.write(payload)
    out.flush()


def main() -> int:
    # Started with -S (no site: faster, and no site-packages in reach); programs still expect exit() and quit().
    import _sitebuiltins

    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    spec = json.loads(sys.stdin.buffer.read())
    if spec["own_pid_namespace"]:
        # pid 1 of the sandbox: no process of the namespace can kill or stop it; non-dumpable: none can
        # ptrace it or take its descriptors (pidfd_getfd) and write into its report.
        _set_dumpable(0)
    report_bytes = spec["report_bytes"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (report_bytes, report_bytes))
    encoding = spec.get("encoding", "raw")
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
            header, payload = _run_one(spec, index, test, min(spec["timeout_s"], remaining))
            _emit(header, payload, encoding)
            if header["timed_out"]:
                break
    finally:
        if not spec["own_pid_namespace"]:
            import shutil

            shutil.rmtree(spec["tmp_dir"], ignore_errors=True)
    _emit({"done": True}, b"", encoding)
    return 0


if __name__ == "__main__":
    sys.exit(main())
