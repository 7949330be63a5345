"""Fixtures for the job tests: the upload tests' deployment, plus a folder for the
``statelab worker`` and ``statelab serve`` processes a test starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.files.conftest import deployment

__all__ = ["deployment", "run_dir"]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Where test processes keep their logs, PIDs and data folders."""
    path = tmp_path / "run"
    path.mkdir()
    return path
