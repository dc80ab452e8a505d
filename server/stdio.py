"""The stdio transport's incoming side, with every line that is no JSON-RPC message answered.

The SDK's stdio reader hands such a line to the session as an exception, and the session drops it: a
client that sent a request the SDK could not read (a JavaScript client that cut a string inside an
emoji writes a lone surrogate escape such as "\\ud83d", which the SDK's JSON parser refuses) never
hears back, and waits for ever. Here each one gets a JSON-RPC error (with the request's id when the line
is JSON enough to have one), and a warning in the log."""

from __future__ import annotations

import json
import logging
from types import TracebackType
from typing import Any

import mcp_types as types
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

log = logging.getLogger(__name__)
SHOWN = 200  # characters of a bad line quoted in the log


class AnsweringBadLines:
    """A read stream of session messages that answers, instead of passing on, each line the transport
    could not read as a message."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], replies: WriteStream[SessionMessage]) -> None:
        self.inner = inner
        self.replies = replies

    @property
    def last_context(self) -> Any:  # (the sender's context of the last item, which the SDK's dispatcher reads)
        return getattr(self.inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        while isinstance(item := await self.inner.receive(), Exception):
            await self._answer(item)
        return item

    def __aiter__(self) -> AnsweringBadLines:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        while isinstance(item := await self.inner.__anext__(), Exception):
            await self._answer(item)
        return item

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> AnsweringBadLines:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self.inner.__aexit__(exc_type, exc, tb)

    async def _answer(self, exc: Exception) -> None:
        try:
            reply = error_for(exc)
        except Exception:  # whatever the line held, the session goes on: answered without its id
            log.exception("stdio: reading a bad line's id failed")
            reply = _error(None, types.PARSE_ERROR, f"Parse error: {_first(exc)}")
        log.warning("stdio: a line that is no JSON-RPC message: %s", reply.error.message)
        await self.replies.send(SessionMessage(reply))


def error_for(exc: Exception) -> types.JSONRPCError:
    """The JSON-RPC error that answers the line the transport failed to read with `exc`."""
    line = _json_invalid_input(exc)
    if line is None:  # JSON, but not a JSON-RPC message (the SDK's reader keeps no copy of the line)
        return _error(None, types.INVALID_REQUEST, f"Invalid Request: not a JSON-RPC 2.0 message ({_first(exc)})")
    detail = _first(exc)
    if "surrogate" in detail or "hex escape" in detail:
        detail += (
            " (a \\u escape that is half of a surrogate pair, such as \\ud83d alone, is not text: send each character "
            "whole, one beyond U+FFFF as both halves of its pair or as UTF-8)"
        )
    request_id = top_level_id(line)
    shown = "" if request_id is not None else f": {line[:SHOWN]!r}"
    return _error(request_id, types.PARSE_ERROR, f"Parse error: {detail}{shown}")


def top_level_id(line: str) -> int | str | None:
    """The `id` member of the object `line` holds, read without parsing the rest (which may be nested deeper
    than any parser goes, or hold what a parser refuses): None when there is no such member, or it is no id."""
    depth, i, n = 0, 0, len(line)
    while i < n:
        c = line[i]
        if c == '"':
            end = _string_end(line, i)
            if depth == 1 and line[i:end] == '"id"' and line[end:].lstrip().startswith(":"):
                value = line[end:].lstrip()[1:].lstrip()
                try:
                    found, _ = json.JSONDecoder().raw_decode(value)
                except (ValueError, RecursionError):
                    return None
                ok = isinstance(found, int | str) and not isinstance(found, bool)
                return found if ok else None
            i = end
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        i += 1
    return None


def _string_end(line: str, start: int) -> int:
    """The index just past the JSON string that starts at `start` (or the line's end)."""
    i = start + 1
    while i < len(line):
        if line[i] == "\\":
            i += 2
        elif line[i] == '"':
            return i + 1
        else:
            i += 1
    return len(line)


def _json_invalid_input(exc: Exception) -> str | None:
    if isinstance(exc, ValidationError):
        for err in exc.errors(include_url=False):
            if err["type"] == "json_invalid" and isinstance(err.get("input"), str):
                return str(err["input"])
    return None


def _first(exc: Exception) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        return str(exc.errors(include_url=False)[0]["msg"])
    return str(exc)[:SHOWN]


def _error(request_id: int | str | None, code: int, message: str) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))
