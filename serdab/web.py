"""What Serdab's HTTP services share: a 4xx carrying a one-line detail, and bounded body reads.

A body is refused (413) as soon as its declared length or the bytes streamed so far pass the
limit, so an oversized upload never sits whole in memory; the content type is checked first (415).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = ["HttpError", "install_http_error", "read_body"]


class HttpError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def install_http_error(app: FastAPI) -> None:
    @app.exception_handler(HttpError)
    async def _http_error(_: Request, error: HttpError) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status)


async def read_body(request: Request, kinds: tuple[str, ...], limit: int) -> bytes:
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind not in kinds:
        raise HttpError(415, f"content type must be {' or '.join(kinds)}, got {kind or 'none'}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"body of {declared} bytes is over the {limit}-byte limit")
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise HttpError(413, f"body is over the {limit}-byte limit")
    return bytes(chunks)
