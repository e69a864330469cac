"""Shared by the end-to-end runs: the tiny CPU recipe's model and data (runner: ``demo_runs.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    """One tiny model and data set for every run of the session (built by the first run)."""
    return tmp_path_factory.mktemp("tiny_cpu_assets")
