"""GET a target's /metrics with a timeout and a cap on the body; every failure becomes a `FetchError(reason)`."""

from __future__ import annotations

import asyncio

import aiohttp

from spec_exporter.types import PollError

ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"


class FetchError(Exception):
    def __init__(self, reason: PollError, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def fetch_metrics(session: aiohttp.ClientSession, url: str, timeout: float, max_bytes: int) -> str:
    """The body as text, complete, within `timeout` seconds and `max_bytes` (after decompression)."""
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout), headers={"Accept": ACCEPT}, allow_redirects=False
        ) as response:
            if response.status != 200:
                raise FetchError(PollError.HTTP_STATUS, f"HTTP {response.status}")
            if response.content_length is not None and response.content_length > max_bytes:
                raise FetchError(
                    PollError.BODY_TOO_LARGE, f"Content-Length {response.content_length} exceeds {max_bytes} bytes"
                )
            chunks = []
            size = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    # Stop reading: the connection is dropped rather than drained.
                    raise FetchError(PollError.BODY_TOO_LARGE, f"body exceeds {max_bytes} bytes")
                chunks.append(chunk)
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError(PollError.TIMEOUT, f"no complete response within {timeout:g}s") from None
    except aiohttp.ClientPayloadError as e:
        raise FetchError(PollError.TRUNCATED, f"body cut short: {e}") from None
    except (aiohttp.ClientError, OSError) as e:
        raise FetchError(PollError.CONNECTION, f"{type(e).__name__}: {e}") from None
    except asyncio.CancelledError:
        raise
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FetchError(PollError.PARSE_ERROR, f"body is not UTF-8: {e.reason} at byte {e.start}") from None
    # The text format has no end marker; prometheus_client always ends the body with a newline, so a body
    # without one stopped mid-line.
    if text and not text.endswith("\n"):
        raise FetchError(PollError.TRUNCATED, "body does not end with a newline")
    return text
