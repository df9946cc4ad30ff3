"""Property-based tests of the live daemon against its own OpenAPI document.

Run through scripts/with-daemon.py (`make test-openapi`): schemathesis loads
`GET /openapi.json` from the daemon at EMBERD_ADDR and, for every operation,
sends generated requests (valid and hostile: unknown ids, malformed bodies,
odd paths and queries). Each answer must be no 5xx, have a documented status
and content type, and match its documented schema.

Creating a VM is slow under emulation, so the examples per operation are few
and derandomized (the same requests every run). `test_every_operation` sees
unknown sandbox ids; `test_sandbox_operations` runs the operations on one
live sandbox (exec, files, processes with generated input), and
`test_lifecycle` creates, runs code in and deletes sandboxes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

schemathesis.experimental.OPEN_API_3_1.enable()

ADDR = os.environ["EMBERD_ADDR"]
BASE = f"http://{ADDR}"
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)
# Examples per operation; a create boots a VM, so it gets fewer.
EXAMPLES = int(os.environ.get("EMBERD_OPENAPI_EXAMPLES", "50"))
CREATE_EXAMPLES = 10

# EMBERD_OPENAPI_FILE: test a daemon against a document from a file instead.
SCHEMA_FILE = os.environ.get("EMBERD_OPENAPI_FILE")
schema = (
    schemathesis.from_path(SCHEMA_FILE, base_url=BASE)
    if SCHEMA_FILE
    else schemathesis.from_uri(f"{BASE}/openapi.json", base_url=BASE)
)
common = settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=EXAMPLES,
    suppress_health_check=list(HealthCheck),
)


def delete_all() -> None:
    with httpx.Client(base_url=BASE, timeout=60) as client:
        for sandbox in client.get("/sandboxes").json()["sandboxes"]:
            client.delete(f"/sandboxes/{sandbox['id']}")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    with httpx.Client(base_url=BASE, timeout=120) as client:
        created = client.post("/sandboxes", json={"language_pack": "python"})
        assert created.status_code == 201, created.text
        sandbox_id: str = created.json()["id"]
    yield sandbox_id
    delete_all()


# /mcp is left to its own suite (make test-mcp), which speaks MCP with a real client: the
# document describes it as one opaque JSON-RPC operation, with nothing to generate from.
@schema.exclude(method="POST", path="/sandboxes").exclude(path="/mcp").parametrize()
@common
def test_every_operation(case: schemathesis.Case) -> None:
    """Every operation but create and MCP, with generated ids: 4xx, never 5xx."""
    case.call_and_validate(checks=CHECKS, timeout=120)


@schema.include(method="POST", path="/sandboxes").parametrize()
@settings(common, max_examples=CREATE_EXAMPLES)
def test_create(case: schemathesis.Case) -> None:
    """Generated create bodies: a sandbox or a clear 4xx; each one deleted."""
    try:
        case.call_and_validate(checks=CHECKS, timeout=120)
    finally:
        delete_all()


@schema.include(path_regex=r"^/sandboxes/\{id\}/").parametrize()
@common
def test_sandbox_operations(case: schemathesis.Case, sandbox: str) -> None:
    """The operations on a live sandbox, with generated bodies, paths and queries."""
    assert case.path_parameters is not None
    case.path_parameters["id"] = sandbox
    case.call_and_validate(checks=CHECKS, timeout=120)


def test_lifecycle() -> None:
    """Create, exec and delete through the documented operations, validated."""
    create = schema["/sandboxes"]["POST"]
    exec_ = schema["/sandboxes/{id}/exec"]["POST"]
    delete = schema["/sandboxes/{id}"]["DELETE"]
    for n in range(3):
        created = create.make_case(body={"language_pack": "python"}).call_and_validate(
            checks=CHECKS, timeout=120
        )
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["id"]
        ran = exec_.make_case(
            path_parameters={"id": sandbox_id}, body={"code": f"print({n} * 7)"}
        ).call_and_validate(checks=CHECKS, timeout=120)
        assert ran.json()["stdout"] == f"{n * 7}\n"
        gone = delete.make_case(path_parameters={"id": sandbox_id}).call_and_validate(
            checks=CHECKS, timeout=120
        )
        assert gone.status_code == 204
