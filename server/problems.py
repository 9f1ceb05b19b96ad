"""Refused requests as RFC 9457 problem documents (`application/problem+json`)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

__all__ = ["PROBLEM", "Problem", "problem_response"]

PROBLEM = "application/problem+json"


class Problem(Exception):
    """A refused request: becomes a problem+json response with `status`."""

    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra

    def response(self) -> JSONResponse:
        return problem_response(self.status, self.title, self.detail, **self.extra)


def problem_response(status: int, title: str, detail: str = "", **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM)
