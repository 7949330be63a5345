"""The README's HTTP API table lists exactly the routes of ``/openapi.json``."""

from __future__ import annotations

import re
from pathlib import Path

from statelab.config import build_settings
from statelab.web.app import create_app

README = Path(__file__).resolve().parents[1] / "README.md"
_ROW = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)")


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_readme_api_table_matches_openapi(tmp_path: Path) -> None:
    documented = {
        (m.group(1), _shape(m.group(2)))
        for line in README.read_text().splitlines()
        if (m := _ROW.match(line))
    }
    settings = build_settings(
        profile="stateful", database_url=f"sqlite:///{tmp_path / 'x.db'}", data_dir=tmp_path
    )
    schema = create_app(settings).openapi()
    served = {
        (method.upper(), _shape(path))
        for path, operations in schema["paths"].items()
        for method in operations
    }
    assert len(documented) > 30, "the README table was not found"
    assert served - documented == set(), "routes missing from the README"
    assert documented - served == set(), "README rows with no such route"
