"""Reading a request within its limits: the body, a multipart upload, the client's time limit.

Bodies over ``limit`` bytes are refused with 413 from ``Content-Length`` or while streaming, never read whole.
A multipart upload is read within the limit before it is parsed: Starlette bounds the size of form fields,
not of files, so a chunked upload without ``Content-Length`` would otherwise have no bound.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from common.errors import HttpError


@dataclass(frozen=True)
class BodyLimits:
    """How much a request body may hold and how slowly it may arrive.

    A body must arrive whole within ``timeout_s``, and keep up ``min_bytes_per_s`` after a ``grace_s`` start:
    a client that trickles bytes (one a second keeps a plain read alive forever) is cut off with 408 within
    about ``grace_s``, so its slot goes back to the others long before the overall limit.
    """

    max_bytes: int
    timeout_s: float
    min_bytes_per_s: float
    grace_s: float = 1.0


class BodyReader:
    """Reads request bodies within ``limits``, at most ``max_concurrent`` at a time in this replica: bodies in
    memory are bounded by ``max_concurrent x max_bytes``, and uploads past the cap wait their turn (503 with
    ``Retry-After`` once they have waited ``timeout_s``)."""

    def __init__(self, limits: BodyLimits, max_concurrent: int) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(max_concurrent)

    async def body(self, request: Request) -> bytes:
        """The whole body, at most ``max_bytes`` (413 past it), in time (408 otherwise); 400 if empty.

        Time limits use ``asyncio.timeout`` scopes, not ``wait_for``: no extra task per request or chunk.
        """
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise HttpError(503, "too many uploads in progress; retry shortly", {"Retry-After": "1"}) from None
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                return await _read_body(request, self.limits)
        except TimeoutError:
            raise HttpError(408, f"the request body did not arrive within {self.limits.timeout_s:g} s") from None
        finally:
            self._slots.release()

    async def files(self, request: Request) -> list[tuple[str, bytes]]:
        """(file name, bytes) for each file of a multipart upload, or the raw body as one file named ``image``."""
        return await _files_of(request, await self.body(request), self.limits.max_bytes)


async def _read_body(request: Request, limits: BodyLimits) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise HttpError(413, f"request body of {declared} bytes is over the {limits.max_bytes} limit")
    chunks, size = [], 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = aiter(request.stream())
    while True:
        # The next chunk must come while the body, so far, keeps up the minimum rate after the grace.
        try:
            async with asyncio.timeout_at(started + limits.grace_s + size / limits.min_bytes_per_s):
                chunk = await anext(stream)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise HttpError(
                408,
                f"the request body arrives too slowly: {size} bytes in {loop.time() - started:.1f} s, under "
                f"the minimum of {limits.min_bytes_per_s:g} bytes/s",
            ) from None
        size += len(chunk)
        if size > limits.max_bytes:
            raise HttpError(413, f"request body is over the {limits.max_bytes}-byte limit")
        chunks.append(chunk)
    if not size:
        raise HttpError(400, "empty request body: send an image")
    return b"".join(chunks)


async def _files_of(request: Request, body: bytes, max_bytes: int) -> list[tuple[str, bytes]]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return [("image", body)]

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, replay(), max_part_size=max_bytes)
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
