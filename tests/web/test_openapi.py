"""The OpenAPI document tells the truth: every answer a route gives is in it, each
error as a ``Problem`` in ``application/problem+json``; and schemathesis, fuzzing a
live replica on PostgreSQL from that document, finds nothing it does not say."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from statelab.db.migrate import upgrade
from tests.chat.support import Replica
from tests.support import register_and_login
from tests.web.conftest import ShopFactory

PROBLEM = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
INT64_MAX = 2**63 - 1


async def _document(shop: ShopFactory) -> dict[str, Any]:
    client = await shop("stateless")
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    document: dict[str, Any] = r.json()
    return document


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def _errors(operation: dict[str, Any]) -> set[int]:
    return {int(status) for status in operation["responses"] if int(status) >= 400}


async def test_every_error_answer_is_a_documented_problem(shop: ShopFactory) -> None:
    document = await _document(shop)
    for method, path, operation in _operations(document):
        for status, answer in operation["responses"].items():
            if int(status) < 400 or (path, status) == ("/readyz", "503"):
                continue
            assert answer["content"] == {PROBLEM: {"schema": PROBLEM_REF}}, (method, path, status)
            if status in ("429", "503"):
                assert answer["headers"]["Retry-After"]["required"] is True
    schemas = document["components"]["schemas"]
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail"}
    assert "HTTPValidationError" not in schemas, "our 422 is a Problem, not FastAPI's"


async def test_each_route_lists_what_it_can_answer(shop: ShopFactory) -> None:
    ops = {(m, p): op for m, p, op in _operations(await _document(shop))}
    assert _errors(ops["GET", "/api/menu"]) == {503}  # the cache placement's store
    assert _errors(ops["PUT", "/api/admin/menu/{item_id}"]) == {
        400, 401, 403, 404, 413, 415, 422, 503,
    }  # fmt: skip
    assert _errors(ops["GET", "/healthz"]) == set()
    # Anonymous carts: no 401; a cookie write needs its CSRF token (403).
    assert _errors(ops["POST", "/api/cart/items"]) == {400, 403, 413, 415, 422, 503}
    assert _errors(ops["DELETE", "/api/cart/items/{item_id}"]) == {403, 404, 422, 503}
    assert _errors(ops["GET", "/api/orders/{order_id}"]) == {401, 404, 422, 503}
    assert _errors(ops["POST", "/api/account/withdraw"]) == {
        400, 401, 403, 409, 413, 415, 422, 503,
    }  # fmt: skip
    assert _errors(ops["POST", "/api/auth/login"]) == {400, 401, 413, 415, 422, 429, 503}
    assert _errors(ops["GET", "/api/files/{file_id}"]) == {401, 404, 422, 503}
    download = ops["GET", "/api/files/{file_id}"]["responses"]["200"]["content"]
    assert set(download) == {"image/jpeg", "image/png", "image/webp", "text/plain"}
    assert set(ops["GET", "/metrics"]["responses"]["200"]["content"]) == {"text/plain"}


async def test_money_routes_document_their_idempotency_key(shop: ShopFactory) -> None:
    ops = {(m, p): op for m, p, op in _operations(await _document(shop))}
    for path in ("/api/account/top-up", "/api/account/withdraw", "/api/checkout"):
        headers = [p for p in ops["POST", path]["parameters"] if p["in"] == "header"]
        assert [(h["name"], h["required"]) for h in headers] == [("Idempotency-Key", True)]
    assert "parameters" not in ops["POST", "/api/cart/items"]


async def test_bounds_are_exact_integers(shop: ShopFactory) -> None:
    document = await _document(shop)
    order = document["paths"]["/api/orders/{order_id}"]["get"]["parameters"][0]["schema"]
    assert (order["minimum"], order["maximum"]) == (1, INT64_MAX)
    # FastAPI's model would write a body field's bound as the float 2**63.
    item = document["components"]["schemas"]["AddItem"]["properties"]["item_id"]
    assert item["maximum"] == INT64_MAX
    assert isinstance(item["maximum"], int)
    name = document["components"]["schemas"]["NewRoom"]["properties"]["name"]
    assert name["pattern"] == "^[^\\u0000]*$"


# ---------------------------------------------------------------------- fuzzing

#: Everything the document promises. Logout would end the token the run uses.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
)
EXCLUDED = ("/api/auth/logout", "/api/auth/logout-all")
#: Per operation and phase; with a fixed seed the run is the same every time.
MAX_EXAMPLES, SEED = 40, 20240601


@pytest.fixture
def replica(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Replica]:
    """A ``statelab serve`` process of the token profile (bearer tokens) on PostgreSQL."""
    upgrade(postgres_url)
    with Replica(tmp_path, "r1", "token", postgres_url, redis_url) as process:
        yield process


@pytest.mark.timeout(300)
async def test_schemathesis_finds_nothing_the_document_does_not_say(
    replica: Replica, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=replica.http) as client:
        headers = await register_and_login(client, "fuzzer")
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{replica.http}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--generation-database", "none",
        "--no-color",
    ]  # fmt: skip
    for name, value in headers.items():
        argv += ["--header", f"{name}: {value}"]
    for path in EXCLUDED:
        argv += ["--exclude-path", path]
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    counts = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", run.stdout)
    assert counts is not None, run.stdout[-5000:]
    selected, total, tested = map(int, counts.groups())
    assert selected == tested == total - len(EXCLUDED) > 20, "every other operation ran"
