"""A cluster's run folder as others see it: where its state file lives, how to read it,
and the errors cluster operations raise. Imported by the supervisor, the control
API's server and its client alike, so that none of them imports another."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE_FILE = "cluster.json"
EVENTS_FILE = "events.jsonl"


class ClusterError(RuntimeError):
    """A request the cluster cannot honour; ``status`` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class ClusterNotFound(ClusterError):
    """No cluster state in the run folder, or its supervisor does not answer."""


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The ``cluster.json`` of ``run_dir``, or ``None`` when there is none."""
    try:
        data: dict[str, Any] = json.loads((run_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    return data
