"""Child side of the code sandbox, run as ``python -I sandbox_child.py SPEC_JSON`` in a fresh directory.

Order matters: the resource limits and the audit hook are in place before the candidate's code is
compiled, so nothing it runs escapes them. Standard library only: under ``-I`` neither this file's
directory nor the project is on ``sys.path``.

SPEC_JSON holds ``code_path``, ``fn_name`` (None: run as a stdin/stdout program), ``args`` (the
positional arguments of the call), ``result_path`` (where the call's return value is written as
JSON), ``cpu_s``, ``memory_bytes`` and ``fsize_bytes``.
"""

import builtins
import json
import linecache
import resource
import socket
import sys
import traceback

SOLUTION_FILE = "solution.py"

# Python-level network and process access. Process creation and signals are blocked so the program
# cannot start an unhooked interpreter or kill the reward worker; AF_UNIX socket pairs stay allowed
# (the stdlib uses them internally) but connecting anything anywhere is not.
BLOCKED_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
    }
)


def _guard(event: str, args: tuple) -> None:
    if event in BLOCKED_EVENTS or (event == "socket.__new__" and args[1] != socket.AF_UNIX):
        kind = "network" if event.startswith("socket.") else "process"
        raise PermissionError(f"sandbox: {kind} access is blocked ({event})")


def _apply_limits(spec: dict) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (spec["cpu_s"], spec["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (spec["memory_bytes"], spec["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize_bytes"], spec["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _jsonable(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


def _report(exc: BaseException, namespace: dict) -> None:
    """Print the traceback restricted to the candidate's own frames to stderr."""
    # The program's globals may hold what exhausted the memory limit; free them before formatting.
    namespace.clear()
    try:
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


def main(spec_path: str) -> int:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    with open(spec["code_path"], encoding="utf-8") as f:
        source = f.read()
    _apply_limits(spec)
    sys.addaudithook(_guard)

    linecache.cache[SOLUTION_FILE] = (len(source), None, source.splitlines(True), SOLUTION_FILE)
    fn_name = spec["fn_name"]
    # A call test must not run the program's ``if __name__ == "__main__":`` block (it would read stdin).
    namespace = {"__name__": "__main__" if fn_name is None else "solution", "__builtins__": builtins}
    try:
        exec(compile(source, SOLUTION_FILE, "exec"), namespace)
        if fn_name is not None:
            value = _call(namespace, fn_name, spec["args"])
            with open(spec["result_path"], "w", encoding="utf-8") as f:
                json.dump(value, f, default=_jsonable)
    except SystemExit:
        raise
    except BaseException as exc:
        sys.stdout.flush()
        _report(exc, namespace)
        return 1
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
