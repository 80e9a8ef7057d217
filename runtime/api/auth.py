"""``Authorization: Bearer <key>`` -> the key's principal (``runtime.api_keys``); every
route names the scope it needs. A missing, malformed, unknown, revoked or expired key is
401 (the same answer for each); a key without the scope is 403."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runtime.api.problems import DEFERRED_CHECK
from runtime.api_keys import Principal, key_parts
from runtime.service import RuntimeService

_bearer = HTTPBearer(auto_error=False, description="An agentrt API key: agrt_<prefix>_<secret>")


def _runtime(request: Request) -> RuntimeService:
    svc: RuntimeService = request.app.state.svc
    return svc


async def service(request: Request) -> RuntimeService:
    """The app's runtime. ``async`` because it does no I/O: FastAPI runs a plain ``def``
    dependency in a worker thread, a thread hop on every request for a dictionary read."""
    return _runtime(request)


def _verified(
    svc: RuntimeService, presented: str | None, scope: str, run_id: str | None
) -> Principal:
    # ``authenticate`` refuses a missing or malformed key first (``key_parts``)
    principal = svc.api_keys.authenticate(presented)
    principal.require(scope)
    if svc.settings.sentry_dsn is not None:
        from runtime.error_reporting import tag_request

        tag_request(tenant=principal.tenant, run_id=run_id)
    return principal


def authorized(scope: str) -> Callable[..., Principal]:
    """A dependency: the request's principal, which must hold ``scope``."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        presented = None if credentials is None else credentials.credentials
        return _verified(_runtime(request), presented, scope, request.path_params.get("run_id"))

    return dependency


@dataclass(frozen=True)
class PresentedKey:
    """A request's key, not checked yet: an ``async`` endpoint checks it (``principal``)
    in the worker thread that does the rest of its work. A sync dependency would cost a
    thread hop of its own on every request; the submit path, the API's hottest, makes one."""

    svc: RuntimeService
    presented: str | None
    scope: str

    def principal(self) -> Principal:
        """The key's principal, which must hold the scope (blocking: reads the key's row)."""
        return _verified(self.svc, self.presented, self.scope, None)


def presented(scope: str) -> Callable[..., Awaitable[PresentedKey]]:
    """A dependency: the request's key for ``scope``, checked later by the endpoint (the
    OpenAPI document shows the same bearer scheme as ``authorized``)."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> PresentedKey:
        key = None if credentials is None else credentials.credentials
        # a missing or malformed key is refused here, before the body is looked at (a
        # request that cannot be anyone's learns nothing of the schema); the key's row is
        # read by ``principal``: in the endpoint's thread, or by the 422 handler first when
        # the body is invalid (FastAPI validates it after this dependency ran)
        key_parts(key)
        deferred = PresentedKey(_runtime(request), key, scope)
        setattr(request.state, DEFERRED_CHECK, deferred.principal)
        return deferred

    return dependency


Svc = Annotated[RuntimeService, Depends(service)]
Reader = Annotated[Principal, Depends(authorized("runs:read"))]
#: the submit endpoint's key, checked in its one worker thread (``PresentedKey``)
SubmitKey = Annotated[PresentedKey, Depends(presented("runs:submit"))]
Canceller = Annotated[Principal, Depends(authorized("runs:cancel"))]
Approver = Annotated[Principal, Depends(authorized("approvals:decide"))]
Operator = Annotated[Principal, Depends(authorized("dlq:operate"))]
