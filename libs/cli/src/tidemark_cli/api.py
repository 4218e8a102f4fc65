"""The gateway's HTTP API as the everyday commands use it: JSON calls, SSE streams, and
every error the API or the network gives turned into one line (a ``CliError``).

A message never carries the token, nor a URL's user information; a problem+json answer
is shown as its status, title and each invalid field with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from tidemark_cli.config import discover
from tidemark_cli.errors import CliError

# A call answers within seconds; a stream beats (a comment) at least every 15 s, so 45 s of
# silence on one means the connection is gone and the stream is resumed.
CALL_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
STREAM_TIMEOUT = httpx.Timeout(30.0, connect=10.0, read=45.0)
PREFIX = "/api/v1"
RETRYABLE = (502, 503, 504)


def redacted(url: str) -> str:
    """``url`` without user information (``http://user:pw@host`` → ``http://host``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def problem_message(status: int, body: bytes, content_type: str | None) -> str:
    """One line for a 4xx/5xx answer: the status, the title, and each invalid field with
    its reason (else the detail). A body that is not JSON is not shown: it could be
    anything a proxy wrote."""
    reason = httpx.codes.get_reason_phrase(status) or "error"
    problem: Any = None
    if content_type and "json" in content_type:
        try:
            problem = json.loads(body)
        except ValueError:
            problem = None
    if not isinstance(problem, dict):
        return f"API answered {status} {reason}"
    title = _one_line(problem.get("title") or reason)
    line = f"API answered {status} {title}"
    errors = problem.get("errors")
    fields = []
    if isinstance(errors, list):
        for error in errors:
            if isinstance(error, dict):
                field = _one_line(error.get("field") or "?")
                fields.append(f"{field}: {_one_line(error.get('message') or 'invalid')}")
    if fields:
        return f"{line}: " + "; ".join(fields)
    detail = problem.get("detail")
    return f"{line}: {_one_line(detail)}" if detail else line


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: its id (what ``Last-Event-ID`` resumes from), its name and
    its data (JSON-decoded)."""

    id: str | None
    event: str
    data: Any


class SseDecoder:
    """text/event-stream lines in, events out (comments and retry hints dropped)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        """Take one line (without its end); an event when ``line`` ends one."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event = self._data, self._event or "message"
        self._data, self._event = [], None
        if not data:
            return None
        text = "\n".join(data)
        try:
            decoded: Any = json.loads(text)
        except ValueError:
            decoded = text
        return SseEvent(self._id, event, decoded)


class StreamBroken(Exception):
    """The stream's connection failed or went silent: resume it with the last id."""


class Api:
    """An HTTP client of the gateway, with the bearer token; close it when done."""

    def __init__(
        self, base_url: str, token: str, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.shown_url = redacted(self.base_url)
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=CALL_TIMEOUT,
            transport=transport,
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._call("GET", path, params=params)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self._call("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self._call("DELETE", path)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        params = kwargs.get("params")
        if params is not None:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        try:
            response = self._client.request(method, PREFIX + path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        self._check(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"API answered {response.status_code} with a body that is not JSON"
            ) from None

    def _check(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            raise CliError(
                problem_message(
                    response.status_code, response.read(), response.headers.get("content-type")
                )
            )

    def _unreachable(self, exc: httpx.HTTPError) -> CliError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return CliError(f"cannot reach the API at {self.shown_url}")
        if isinstance(exc, httpx.TimeoutException):
            return CliError(f"the API at {self.shown_url} did not answer in time")
        return CliError(f"the API at {self.shown_url} failed: {type(exc).__name__}")

    @contextmanager
    def stream(self, path: str, last_event_id: str | None = None) -> Iterator[Iterator[SseEvent]]:
        """The events of one connection to an SSE endpoint. An error answer is a
        ``CliError``; a connection that cannot be made, breaks or goes silent while
        streaming is ``StreamBroken`` (the caller resumes with ``last_event_id``)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        try:
            with self._client.stream(
                "GET", PREFIX + path, headers=headers, timeout=STREAM_TIMEOUT
            ) as response:
                if response.status_code in RETRYABLE:
                    # A gateway restarting or behind a proxy that lost it: try again.
                    raise StreamBroken(f"API answered {response.status_code}")
                self._check(response)
                yield self._events(response)
        except httpx.HTTPError as exc:
            raise StreamBroken(self._unreachable(exc).message) from None

    @staticmethod
    def _events(response: httpx.Response) -> Iterator[SseEvent]:
        decoder = SseDecoder()
        for line in response.iter_lines():
            event = decoder.feed(line)
            if event is not None:
                yield event


def connect() -> Api:
    """The API of the discovered target (``TIDEMARK_API_URL`` and ``TIDEMARK_TOKEN``, else
    ``make run``'s run.json)."""
    base_url, token = discover().need_api()
    return Api(base_url, token)
