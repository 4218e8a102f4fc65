"""The HTTP client and progress following, against a real HTTP server on loopback that
answers what each test scripts (errors, streams that drop, streams that never end)."""

from __future__ import annotations

import io
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import typer
from rich.console import Console
from tidemark_cli.api import Api, SseDecoder, SseEvent, problem_message, redacted
from tidemark_cli.app import app
from tidemark_cli.errors import CliError
from tidemark_cli.follow import (
    MAX_ATTEMPTS_WITHOUT_EVENT,
    BarView,
    LineView,
    ProgressState,
    follow_stream,
)
from tidemark_cli.restores import parse_utc, utc_text
from typer.testing import CliRunner

TOKEN = "tok-7c1e-never-shown"
BACKUP = "0b9f4c2a-5d6e-4f70-8a91-b2c3d4e5f607"
Reply = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    url: str
    replies: list[Reply] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    bodies: list[object] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            state.bodies.append(json.loads(self.rfile.read(length)) if length else None)
            state.seen.append(Seen(self.command, self.path, dict(self.headers.items())))
            reply = state.replies.pop(0) if state.replies else json_reply(500, {})
            reply(self)

        do_GET = do_POST = do_DELETE = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def json_reply(status: int, body: object, content_type: str = "application/json") -> Reply:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return reply


def sse_reply(*events: tuple[int, str, dict[str, object]], comment: bool = True) -> Reply:
    """A stream of ``events`` (id, name, data), then the connection is closed."""

    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        if comment:
            handler.wfile.write(b": ping\n\n")
        for event_id, name, data in events:
            text = f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
            handler.wfile.write(text.encode())
            handler.wfile.flush()
        handler.close_connection = True

    return reply


def tick(
    phase: str, percent: float | None, done: int = 0, total: int | None = None
) -> dict[str, object]:
    return {
        "backupId": BACKUP,
        "status": "running",
        "phase": phase,
        "percent": percent,
        "bytesDone": done,
        "bytesTotal": total,
        "message": None,
        "at": "2026-11-30T10:00:00Z",
    }


def final(status: str, error: str | None = None) -> dict[str, object]:
    return {"id": BACKUP, "status": status, "sizeBytes": 2048, "error": error}


# -- problem+json -> one line -----------------------------------------------------------


def test_a_problem_with_invalid_fields_names_each_field_and_its_reason() -> None:
    body = {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "validation failed for the body",
        "errors": [
            {"field": "type", "message": "a full backup needs\nthe cluster"},
            {"field": "destinationIds[0]", "message": "unknown destination"},
        ],
    }
    message = problem_message(422, json.dumps(body).encode(), "application/problem+json")
    assert message == (
        "API answered 422 Unprocessable Content: type: a full backup needs the cluster; "
        "destinationIds[0]: unknown destination"
    )


def test_a_problem_without_fields_gives_its_detail() -> None:
    body = {"type": "about:blank", "title": "Conflict", "status": 409, "detail": "it runs"}
    message = problem_message(409, json.dumps(body).encode(), "application/problem+json")
    assert message == "API answered 409 Conflict: it runs"


def test_a_body_that_is_not_json_is_not_repeated() -> None:
    message = problem_message(502, b"<html>proxy says secret-ish</html>", "text/html")
    assert message == "API answered 502 Bad Gateway"
    broken = problem_message(500, b"{not json", "application/problem+json")
    assert broken == "API answered 500 Internal Server Error"


def test_a_url_is_shown_without_its_user_information() -> None:
    assert redacted("https://ops:pa55@api.example:8443/base") == "https://api.example:8443/base"


def test_an_error_answer_is_one_line_without_the_token(server: Server) -> None:
    body = {"title": "Unprocessable Content", "status": 422, "detail": "x", "errors": []}
    server.replies.append(json_reply(422, body, "application/problem+json"))
    server.replies.append(
        json_reply(401, {"title": "Unauthorized", "status": 401, "detail": "bad token"})
    )
    with Api(server.url, TOKEN) as api:
        with pytest.raises(CliError) as invalid:
            api.post("/environments/e/backups", {"type": "db"})
        with pytest.raises(CliError) as unauthorized:
            api.get("/backups/alerts")
    assert invalid.value.message == "API answered 422 Unprocessable Content: x"
    assert unauthorized.value.message == "API answered 401 Unauthorized: bad token"
    assert server.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert server.seen[0].path == "/api/v1/environments/e/backups"
    assert TOKEN not in invalid.value.message + unauthorized.value.message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_api_that_is_not_listening_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.setenv("TIDEMARK_API_URL", f"http://admin:pw-in-url@127.0.0.1:{port}")
    monkeypatch.setenv("TIDEMARK_TOKEN", TOKEN)
    result = CliRunner().invoke(app, ["alerts", "count"])
    assert result.exit_code == 1
    assert isinstance(result.exception, CliError)
    assert result.exception.message == f"cannot reach the API at http://127.0.0.1:{port}"


def test_delete_without_yes_and_without_a_terminal_sends_nothing(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDEMARK_API_URL", server.url)
    monkeypatch.setenv("TIDEMARK_TOKEN", TOKEN)
    result = CliRunner().invoke(app, ["backups", "delete", BACKUP])
    assert isinstance(result.exception, CliError)
    assert result.exception.code == 2
    assert "--yes" in result.exception.message
    assert server.seen == []


# -- SSE --------------------------------------------------------------------------------


def test_the_decoder_joins_data_lines_keeps_the_last_id_and_drops_comments() -> None:
    decoder = SseDecoder()
    lines = [": ping", "", "id: 7", "event: progress", 'data: {"a":', "data: 1}", "", ""]
    lines += ["data: plain", ""]
    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    assert events == [SseEvent("7", "progress", {"a": 1}), SseEvent("7", "message", "plain")]


def test_progress_state_from_ticks_and_the_outcome() -> None:
    state = ProgressState()
    state.apply(
        SseEvent("1", "progress", {"status": "running", "phase": "running", "percent": None})
    )
    assert (state.phase, state.percent) == ("running", None)
    state.apply(SseEvent("2", "progress", tick("dumping", None, 250, 1000)))
    assert (state.phase, state.percent, state.bytes_text) == ("dumping", 25.0, "250 B / 1.0 kB")
    state.apply(SseEvent("3", "progress", tick("dumping", 40.0, 400, 1000)))
    assert state.percent == 40.0
    done = ProgressState()
    done.apply(SseEvent("4", "completed", final("completed")))
    assert (done.phase, done.percent, done.bytes_done) == ("completed", 100.0, 2048)
    failed = ProgressState()
    failed.apply(SseEvent("5", "failed", final("failed", "password authentication failed")))
    assert (failed.phase, failed.percent) == ("failed", None)
    assert failed.message == "password authentication failed"


def test_a_dropped_stream_is_resumed_with_the_last_event_id_and_shown_a_line_per_phase(
    server: Server,
) -> None:
    server.replies += [
        sse_reply((10, "progress", tick("running", None)), (11, "progress", tick("dumping", 10.0))),
        sse_reply((12, "progress", tick("dumping", 50.0)), (13, "completed", final("completed"))),
    ]
    shown = io.StringIO()
    view = LineView(f"backup {BACKUP}", Console(file=shown, width=200))
    with Api(server.url, TOKEN) as api:
        outcome = follow_stream(api, f"/backups/{BACKUP}/progress", view, sleep=lambda _: None)
    assert outcome.succeeded
    assert outcome.resource == final("completed")
    assert [s.headers.get("Last-Event-ID") for s in server.seen] == [None, "11"]
    assert shown.getvalue().splitlines() == [
        f"backup {BACKUP} running",
        f"backup {BACKUP} dumping 10%",
        f"backup {BACKUP} completed 100% 2.0 kB / 2.0 kB",
    ]


def test_a_stream_that_keeps_ending_without_an_outcome_is_given_up_in_one_line(
    server: Server,
) -> None:
    server.replies += [sse_reply() for _ in range(MAX_ATTEMPTS_WITHOUT_EVENT)]
    slept: list[float] = []
    with Api(server.url, TOKEN) as api, pytest.raises(CliError) as gave_up:
        follow_stream(
            api,
            f"/backups/{BACKUP}/progress",
            LineView("b", Console(file=io.StringIO())),
            sleep=slept.append,
        )
    assert gave_up.value.message == (
        f"gave up following after {MAX_ATTEMPTS_WITHOUT_EVENT} attempts: "
        "the stream ended before its outcome"
    )
    assert len(server.seen) == MAX_ATTEMPTS_WITHOUT_EVENT
    assert slept == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_a_stream_that_only_repeats_its_current_state_is_given_up_too(server: Server) -> None:
    # Each reconnection opens with the current state (the same id): that is no progress.
    state = (7, "progress", {"status": "running", "phase": "dumping"})
    server.replies += [sse_reply(state) for _ in range(MAX_ATTEMPTS_WITHOUT_EVENT)]
    with Api(server.url, TOKEN) as api, pytest.raises(CliError) as gave_up:
        follow_stream(
            api,
            f"/backups/{BACKUP}/progress",
            LineView("b", Console(file=io.StringIO())),
            sleep=lambda _: None,
        )
    assert gave_up.value.message.startswith(
        f"gave up following after {MAX_ATTEMPTS_WITHOUT_EVENT} attempts"
    )
    assert len(server.seen) == MAX_ATTEMPTS_WITHOUT_EVENT


def test_a_gateway_that_is_restarting_is_retried_and_a_404_is_not(server: Server) -> None:
    server.replies += [
        json_reply(503, {"title": "Service Unavailable", "status": 503, "detail": "x"}),
        sse_reply((3, "failed", final("failed", "no space"))),
        json_reply(404, {"title": "Not Found", "status": 404, "detail": "backup not found"}),
    ]
    with Api(server.url, TOKEN) as api:
        outcome = follow_stream(
            api,
            "/backups/b/progress",
            LineView("b", Console(file=io.StringIO())),
            sleep=lambda _: None,
        )
        assert not outcome.succeeded
        assert outcome.resource["error"] == "no space"
        with pytest.raises(CliError) as missing:
            follow_stream(
                api,
                "/backups/b/progress",
                LineView("b", Console(file=io.StringIO())),
                sleep=lambda _: None,
            )
    assert missing.value.message == "API answered 404 Not Found: backup not found"


def test_the_bar_on_a_terminal_ends_at_100_percent(server: Server) -> None:
    server.replies.append(
        sse_reply(
            (1, "progress", tick("dumping", 30.0, 300, 1000)), (2, "completed", final("completed"))
        )
    )
    drawn = io.StringIO()
    console = Console(file=drawn, force_terminal=True, width=120)
    with Api(server.url, TOKEN) as api:
        follow_stream(
            api, "/backups/b/progress", BarView("backup b", console), sleep=lambda _: None
        )
    text = drawn.getvalue()
    assert " 30%" in text
    assert "dumping" in text
    assert text.rindex("100%") > text.index(" 30%")


# -- restore ------------------------------------------------------------------------------


def test_times_are_read_as_utc() -> None:
    assert utc_text(parse_utc("2026-11-30")) == "2026-11-30T00:00:00Z"
    assert utc_text(parse_utc("2026-11-30T10:00:00+02:00")) == "2026-11-30T08:00:00Z"
    assert utc_text(parse_utc("2026-11-30T10:00:00Z")) == "2026-11-30T10:00:00Z"
    with pytest.raises(typer.BadParameter):
        parse_utc("yesterday")


def test_restore_into_another_environment_at_a_time_sends_the_api_s_body(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDEMARK_API_URL", server.url)
    monkeypatch.setenv("TIDEMARK_TOKEN", TOKEN)
    source, target = str(uuid.uuid4()), str(uuid.uuid4())
    accepted = {"id": str(uuid.uuid4()), "status": "pending", "backupId": BACKUP}
    server.replies += [
        json_reply(200, {"id": BACKUP, "environmentId": source}),
        json_reply(202, accepted),
        json_reply(200, {"id": BACKUP, "environmentId": source}),
        json_reply(202, accepted),
    ]
    args = ["restore", BACKUP, "--no-follow", "--json", "--at", "2026-11-30T10:00:00+01:00"]
    other = CliRunner().invoke(app, [*args, "--target", target])
    same = CliRunner().invoke(app, [*args, "--target", source, "--no-safety-backup"])
    assert other.exit_code == 0, other.output
    assert json.loads(other.stdout) == accepted
    assert same.exit_code == 0, same.output
    assert [(s.method, s.path) for s in server.seen] == [
        ("GET", f"/api/v1/backups/{BACKUP}"),
        ("POST", f"/api/v1/backups/{BACKUP}/restore"),
    ] * 2
    assert server.bodies == [
        None,
        {
            "createSafetyBackup": True,
            "targetType": "other",
            "targetEnvironmentId": target,
            "pitrTimestamp": "2026-11-30T09:00:00Z",
        },
        None,
        {
            "createSafetyBackup": False,
            "targetType": "same",
            "pitrTimestamp": "2026-11-30T09:00:00Z",
        },
    ]


def test_a_type_that_contradicts_the_target_is_refused_before_any_restore(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDEMARK_API_URL", server.url)
    monkeypatch.setenv("TIDEMARK_TOKEN", TOKEN)
    source, elsewhere = str(uuid.uuid4()), str(uuid.uuid4())
    server.replies += [json_reply(200, {"id": BACKUP, "environmentId": source})] * 2
    base = ["restore", BACKUP, "--no-follow"]
    same = CliRunner().invoke(app, [*base, "--target", elsewhere, "--type", "same"])
    other = CliRunner().invoke(app, [*base, "--target", source, "--type", "other"])
    for result in (same, other):  # main() turns these into one line and exit 2
        assert isinstance(result.exception, CliError), result.output
        assert result.exception.code == 2
    # The backup was looked up; no restore was requested.
    assert [s.method for s in server.seen] == ["GET", "GET"]
