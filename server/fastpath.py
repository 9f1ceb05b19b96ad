"""The two routes every workflow takes, answered without FastAPI's per-request machinery.

`POST /v1/workflows` and `POST /v1/workflows/{id}/facts` are most of a busy server's requests.
For them FastAPI's routing, dependency solving and request objects cost more CPU than the
evaluation step itself (docs/server.md has the measurements). This ASGI middleware answers the
two when the request is an ordinary one: a token known without I/O, a JSON body the route's
pydantic model accepts. Anything else (another route, an unknown token, a body the model
refuses, another content type) goes on to FastAPI as it came, with the body read here replayed,
so every refusal is FastAPI's own and the handlers are the very functions its routes call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from server.problems import Problem

__all__ = ["FastPath", "read_body", "replay"]

Handler = Callable[[int, str | None, Any], Awaitable[Response]]
PREFIX, SUFFIX = "/v1/workflows/", "/facts"


class FastPath:
    """`routes` maps "start" and "facts" to (the FastAPI route, its body model, its handler);
    a handler takes (tenant id, workflow id or None, the validated body) and gives the response.
    `tenant_of` is the tenant of an Authorization header when that is known without I/O."""

    def __init__(self, app: Any, *, tenant_of: Callable[[str], int | None],
                 routes: dict[str, tuple[Any, type[BaseModel], Handler]]) -> None:
        self.app, self.tenant_of, self.routes = app, tenant_of, routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        matched = _match(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        headers = _headers(scope) if matched is not None else {}
        tenant_id = self.tenant_of(headers.get(b"authorization", b"").decode("latin-1")) \
            if matched is not None and _json(headers) else None
        if matched is None or tenant_id is None:
            await self.app(scope, receive, send)
            return
        kind, workflow_id = matched
        route, model, handler = self.routes[kind]
        try:
            body = await read_body(receive)
        except Problem as exc:  # past the size limit
            await exc.response()(scope, receive, send)
            return
        try:
            parsed = model.model_validate_json(body)
        except ValidationError:  # FastAPI says what is wrong, in its own words
            await self.app(scope, replay(body), send)
            return
        scope["route"] = route  # for the access log's route label, as the router would set it
        try:
            response = await handler(tenant_id, workflow_id, parsed)
        except Problem as exc:
            response = exc.response()
        await response(scope, receive, send)


def _match(scope: dict[str, Any]) -> tuple[str, str | None] | None:
    path: str = scope["path"]
    if path == "/v1/workflows":
        return "start", None
    if path.startswith(PREFIX) and path.endswith(SUFFIX):
        workflow_id = path[len(PREFIX):-len(SUFFIX)]
        if workflow_id and "/" not in workflow_id:
            return "facts", workflow_id
    return None


def _headers(scope: dict[str, Any]) -> dict[bytes, bytes]:
    return {name: value for name, value in scope["headers"] if name in (b"authorization", b"content-type")}


def _json(headers: dict[bytes, bytes]) -> bool:
    """A body FastAPI would read as JSON: no content type, or a JSON one."""
    kind = headers.get(b"content-type")
    return kind is None or kind.split(b";")[0].strip().lower() == b"application/json"


async def read_body(receive: Any) -> bytes:
    """The whole request body (the size limit's receive raises Problem(413) past it)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return bytes(body)


def replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A receive channel that gives `body` once, then a disconnect."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
