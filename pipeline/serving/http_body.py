"""Reading a request within its limits: the body, a multipart upload, the client's time limit.

Bodies over ``limit`` bytes are refused with 413 from ``Content-Length`` or while streaming, never read whole.
A multipart upload is read within the limit before it is parsed: Starlette bounds the size of form fields,
not of files, so a chunked upload without ``Content-Length`` would otherwise have no bound.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Mapping

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request


class HttpError(Exception):
    """A request we refuse: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes (413 past it) within ``timeout_s`` (408 past it); 400 if empty.

    The time limit is for the whole body, so a client that trickles bytes (one a second keeps a plain read
    alive forever) is cut off and its slot goes back to the others.
    """
    try:
        return await asyncio.wait_for(_read_body(request, limit), timeout_s)
    except TimeoutError:
        raise HttpError(408, f"the request body did not arrive within {timeout_s:g} s") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"request body of {declared} bytes is over the {limit} limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    if not size:
        raise HttpError(400, "empty request body: send an image")
    return b"".join(chunks)


async def read_files(request: Request, limit: int, timeout_s: float) -> list[tuple[str, bytes]]:
    """(file name, bytes) for each file of a multipart upload, or the raw body as one file named ``image``."""
    body = await read_body(request, limit, timeout_s)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return [("image", body)]

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, replay(), max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HttpError(400, f"bad multipart upload: {exc.message}") from None
    try:
        files = [
            (value.filename or key, await value.read())
            for key, value in form.multi_items()
            if isinstance(value, UploadFile)
        ]
    finally:
        await form.close()  # the parser spools files to temporary files
    if not files:
        raise HttpError(400, "multipart upload holds no files")
    return files


def request_timeout_s(headers: Mapping[str, str], configured_s: float) -> float:
    """The configured limit, or less when the client asks with ``X-Request-Timeout-S`` (a finite number > 0)."""
    asked = headers.get("x-request-timeout-s")
    if not asked:
        return configured_s
    try:
        value = float(asked)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise HttpError(400, f"X-Request-Timeout-S must be a positive number of seconds, got {asked!r}")
    return min(configured_s, value)
