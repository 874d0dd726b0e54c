"""The OpenAPI description a client generates its code from, read from a real server: every reference in it
resolves, and the body it gives ``POST /jobs`` (a route that reads its raw body) accepts what the server accepts
and refuses what the server refuses."""

from __future__ import annotations

from typing import Any

import jsonschema

from cloudpilot.domain.auth import Role
from tests.helpers.server import RunningServer

JOB = {"name": "mc", "executable": "/bin/echo", "arguments": ["hi"], "requirements": {"cores": 2, "tags": ["el9"]}}
ACCEPTED = [
    JOB,
    [JOB, {"executable": "/bin/true"}],
    {"job": {"name": "mc-{n}", "executable": "/bin/echo"}, "parameter_count": 3},
]
REFUSED = [
    {"executable": "/bin/echo", "colour": "red"},  # unknown field
    {"name": "no executable"},
    {"executable": "/bin/echo", "requirements": {"cores": 0}},
    [{"executable": "/bin/echo", "priority": "high"}],
    {"job": {"executable": "/bin/echo"}},  # parametric without its count
    "/bin/echo",
    [],  # no job
]


def references(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in references(value)]
    return []


def test_every_reference_in_the_description_resolves(server: RunningServer) -> None:
    doc = server.client(None).get("/openapi.json").json()
    named = doc["components"]["schemas"]
    refs = set(references(doc))
    assert "#/components/schemas/JobSpec" in refs
    unresolved = [ref for ref in refs if not ref.startswith("#/components/schemas/") or ref.split("/")[-1] not in named]
    assert unresolved == [], f"references to nothing in /openapi.json: {unresolved}"


def test_the_submission_schema_and_the_server_agree(server: RunningServer) -> None:
    doc = server.client(None).get("/openapi.json").json()
    body = doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]
    assert body["required"] is True and set(body["content"]) == {"application/json", "application/yaml"}
    schema = {**body["content"]["application/json"]["schema"], "components": doc["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    for sent in ACCEPTED:
        assert list(validator.iter_errors(sent)) == [], sent
        assert user.post("/api/v1/jobs", json=sent).status_code == 201, sent
    for sent in REFUSED:
        assert not validator.is_valid(sent), sent
        r = user.post("/api/v1/jobs", json=sent)
        assert r.status_code == 422, (sent, r.text)
    assert user.get("/api/v1/jobs/summary").json()["counts"]["waiting"] == 1 + 2 + 3
