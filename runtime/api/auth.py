"""``Authorization: Bearer <key>`` -> the key's principal (``runtime.api_keys``); every
route names the scope it needs. A missing, malformed, unknown, revoked or expired key is
401 (the same answer for each); a key without the scope is 403."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runtime.api_keys import Principal
from runtime.errors import ApiKeyRejected
from runtime.service import RuntimeService

_bearer = HTTPBearer(auto_error=False, description="An agentrt API key: agrt_<prefix>_<secret>")


def _runtime(request: Request) -> RuntimeService:
    svc: RuntimeService = request.app.state.svc
    return svc


async def service(request: Request) -> RuntimeService:
    """The app's runtime. ``async`` because it does no I/O: FastAPI runs a plain ``def``
    dependency in a worker thread, a thread hop on every request for a dictionary read."""
    return _runtime(request)


def authorized(scope: str) -> Callable[..., Principal]:
    """A dependency: the request's principal, which must hold ``scope``."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None:
            raise ApiKeyRejected("missing")
        principal = _runtime(request).api_keys.authenticate(credentials.credentials)
        principal.require(scope)
        if _runtime(request).settings.sentry_dsn is not None:
            from runtime.error_reporting import tag_request

            tag_request(tenant=principal.tenant, run_id=request.path_params.get("run_id"))
        return principal

    return dependency


Svc = Annotated[RuntimeService, Depends(service)]
Reader = Annotated[Principal, Depends(authorized("runs:read"))]
Submitter = Annotated[Principal, Depends(authorized("runs:submit"))]
Canceller = Annotated[Principal, Depends(authorized("runs:cancel"))]
Approver = Annotated[Principal, Depends(authorized("approvals:decide"))]
Operator = Annotated[Principal, Depends(authorized("dlq:operate"))]
