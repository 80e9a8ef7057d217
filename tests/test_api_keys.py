"""API keys: hashed at rest, validated, listed without secrets, revoked, and the
``agentrt keys`` commands, on real SQL (no server needed)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from runtime.cli.main import app
from runtime.errors import ApiKeyNotFound, ApiKeyRejected, InvalidRequest, ScopeMissing
from runtime.store.api_keys import api_keys_t
from tests.support import Deployment


def test_a_key_is_hashed_at_rest_and_authenticates(fresh_deployment: Deployment) -> None:
    keys = fresh_deployment.svc.api_keys
    issued = keys.create("t1", ["runs:read", "runs:submit"], actor="test", name="web")
    _, prefix, secret = issued.secret.split("_", 2)
    with fresh_deployment.svc.store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(api_keys_t)).mappings()]
    (row,) = rows
    # the secret is nowhere in the database; its SHA-256 is, with the prefix in clear
    assert secret not in json.dumps(row, default=str)
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["prefix"] == prefix and row["tenant_id"] == "t1"
    who = keys.authenticate(issued.secret)
    assert (who.tenant, who.actor) == ("t1", f"key:{issued.key_id}")
    who.require("runs:read")
    with pytest.raises(ScopeMissing):
        who.require("dlq:operate")
    # a wrong secret with a real prefix, garbage, nothing: rejected, with the reason code
    for presented, reason in (
        (f"agrt_{prefix}_{'x' * 43}", "unknown"),
        ("not-a-key", "malformed"),
        (None, "missing"),
    ):
        with pytest.raises(ApiKeyRejected) as rejected:
            keys.authenticate(presented)
        assert rejected.value.reason == reason
    assert "secret_hash" not in keys.list("t1")[0]


def test_revoked_and_expired_keys_fail(fresh_deployment: Deployment) -> None:
    keys = fresh_deployment.svc.api_keys
    issued = keys.create("t1", ["runs:read"], actor="test", expires_in=timedelta(hours=1))
    keys.authenticate(issued.secret)
    later = keys.list("t1")[0]["created_at"] + timedelta(hours=2)
    with pytest.raises(ApiKeyRejected) as expired:
        keys.authenticate(issued.secret, now=later)
    assert expired.value.reason == "expired"
    revoked = keys.revoke(issued.key_id, "ops")
    assert revoked["revoked_by"] == "ops" and revoked["revoked_at"] is not None
    with pytest.raises(ApiKeyRejected) as rejected:
        keys.authenticate(issued.secret)
    assert rejected.value.reason == "revoked"
    with pytest.raises(ApiKeyNotFound):
        keys.revoke("knope", "ops")


def test_scopes_and_tenants_are_validated(fresh_deployment: Deployment) -> None:
    keys = fresh_deployment.svc.api_keys
    cases = [
        ("t1", ["runs:write"], "scopes"),
        ("t1", [], "scopes"),
        ("*", ["runs:read"], "tenant"),
        ("bad tenant", ["runs:read"], "tenant"),
    ]
    for tenant, scopes, field in cases:
        with pytest.raises(InvalidRequest) as bad:
            keys.create(tenant, scopes, actor="test")
        assert bad.value.fields == (field,)
    admin = keys.create("*", ["ops:admin"], actor="test")
    who = keys.authenticate(admin.secret)
    assert who.tenant is None  # every tenant
    who.require("dlq:operate")  # ops:admin holds every scope


def cli(dep: Deployment, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["keys", *args], env={**dep.env, "COLUMNS": "250"})
    return result.exit_code, result.output


def test_cli_create_list_revoke(fresh_deployment: Deployment) -> None:
    dep = fresh_deployment
    code, output = cli(
        dep, "create", "--tenant", "t2", "--scope", "runs:read", "--scope", "runs:submit",
        "--expires-in", "30d", "--name", "web", "--json",
    )  # fmt: skip
    assert code == 0, output
    created = json.loads(output)
    assert created["key"].startswith("agrt_") and created["scopes"] == ["runs:submit", "runs:read"]
    assert dep.svc.api_keys.authenticate(created["key"]).tenant == "t2"
    code, output = cli(dep, "list", "--tenant", "t2", "--json")
    (listed,) = json.loads(output)
    assert listed["key_id"] == created["key_id"] and listed["expires_at"]
    secret = created["key"].split("_", 2)[2]
    assert secret not in output and "secret_hash" not in output
    # an unknown tenant, a scope that does not exist: refused, nothing stored
    code, output = cli(dep, "create", "--tenant", "nope", "--scope", "runs:read")
    assert code == 2 and "not configured" in output
    code, output = cli(dep, "create", "--tenant", "t1", "--scope", "runs:write")
    assert code == 2
    assert len(dep.svc.api_keys.list()) == 1
    # revoke needs --yes without a terminal
    code, output = cli(dep, "revoke", created["key_id"])
    assert code == 2 and "--yes" in output
    code, output = cli(dep, "revoke", created["key_id"], "--yes")
    assert code == 0, output
    with pytest.raises(ApiKeyRejected):
        dep.svc.api_keys.authenticate(created["key"])
    code, output = cli(dep, "list")
    assert "revoked" in output
