"""Following a backup's or a restore's progress stream (SSE) to its end.

The stream (API.md "SSE streams") sends the current state, live ``progress`` events, then
``completed`` or ``failed`` with the final resource, and closes. A connection that drops,
or a stream that ends without its terminal event (the gateway lost its Kafka tail, or this
client read too slowly), is resumed with ``Last-Event-ID``: the gateway sends what was
missed, never twice. How it is shown: a rich progress bar on a terminal, a plain line per
phase otherwise, or each event as a JSON line with ``--json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from tidemark_cli import output
from tidemark_cli.api import Api, SseEvent, StreamBroken
from tidemark_cli.errors import CliError

TERMINAL_EVENTS = ("completed", "failed")
# Resuming: a stream that keeps failing without a single event in between is given up.
MAX_ATTEMPTS_WITHOUT_EVENT = 8
FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 5.0


def human_bytes(count: int | None) -> str:
    if count is None:
        return ""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{count} B"  # unreachable: the loop returns at TB


@dataclass
class ProgressState:
    """What a progress display shows: the latest phase, percent and bytes."""

    status: str = "pending"
    phase: str = "pending"
    percent: float | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    message: str | None = None

    def apply(self, event: SseEvent) -> None:
        """Take one event: a ``progress`` tick, or the terminal event (whose data is the
        final resource: a completed one is at 100 %)."""
        data = event.data if isinstance(event.data, dict) else {}
        if event.event == "progress":
            self.status = str(data.get("status") or self.status)
            self.phase = str(data.get("phase") or self.status)
            percent = data.get("percent")
            self.bytes_done = int(data.get("bytesDone") or 0) or self.bytes_done
            self.bytes_total = data.get("bytesTotal") or self.bytes_total
            if percent is not None:
                self.percent = float(percent)
            elif self.bytes_total:
                self.percent = min(99.0, 100.0 * self.bytes_done / self.bytes_total)
            self.message = data.get("message")
        elif event.event in TERMINAL_EVENTS:
            self.status = str(data.get("status") or event.event)
            self.phase = event.event
            if event.event == "completed":
                self.percent = 100.0
                size = data.get("sizeBytes")
                if isinstance(size, int):
                    self.bytes_done = self.bytes_total = size
            self.message = data.get("error")

    @property
    def bytes_text(self) -> str:
        if self.bytes_total:
            return f"{human_bytes(self.bytes_done)} / {human_bytes(self.bytes_total)}"
        return human_bytes(self.bytes_done) if self.bytes_done else ""


class View(Protocol):
    def show(self, event: SseEvent, state: ProgressState) -> None: ...

    def close(self) -> None: ...


class JsonView:
    """Each event as one JSON line on stdout: ``{"id", "event", "data"}``."""

    def show(self, event: SseEvent, state: ProgressState) -> None:
        output.print_json({"id": event.id, "event": event.event, "data": event.data})

    def close(self) -> None:
        pass


class LineView:
    """A plain line per phase (and at the end), for logs and pipes."""

    def __init__(self, subject: str, console: Console) -> None:
        self.subject = subject
        self.console = console
        self.shown: str | None = None

    def show(self, event: SseEvent, state: ProgressState) -> None:
        if state.phase == self.shown:
            return
        self.shown = state.phase
        parts = [self.subject, state.phase]
        if state.percent is not None:
            parts.append(f"{state.percent:.0f}%")
        if state.bytes_text:
            parts.append(state.bytes_text)
        self.console.print(" ".join(parts), soft_wrap=True, highlight=False)

    def close(self) -> None:
        pass


class BarView:
    """A rich progress bar: phase, bar, percent, bytes, time elapsed."""

    def __init__(self, subject: str, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[phase]}", markup=False),
            TextColumn("{task.fields[bytes]}", markup=False),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=10,
        )
        self.task: TaskID = self.progress.add_task(subject, total=100, phase="pending", bytes="")
        self.progress.start()

    def show(self, event: SseEvent, state: ProgressState) -> None:
        self.progress.update(
            self.task,
            completed=state.percent or 0.0,
            phase=state.phase,
            bytes=state.bytes_text,
        )
        # Each change drawn at once, not only on the next refresh tick.
        self.progress.refresh()

    def close(self) -> None:
        self.progress.stop()


def view_for(subject: str, as_json: bool, console: Console | None = None) -> View:
    """JSON lines with ``--json``; a bar when stdout is a terminal; else lines."""
    if as_json:
        return JsonView()
    console = console or output.stdout
    if console.is_terminal:
        return BarView(subject, console)
    return LineView(subject, console)


@dataclass(frozen=True)
class Outcome:
    """How a followed stream ended: ``completed`` or ``failed``, and the final resource."""

    event: str
    resource: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return self.event == "completed"


def follow_stream(
    api: Api,
    path: str,
    view: View,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Read the stream at ``path`` to its terminal event, resuming by id when it drops."""
    state = ProgressState()
    last_id: str | None = None
    failures = 0
    delay = FIRST_RETRY_DELAY
    try:
        while True:
            try:
                with api.stream(path, last_id) as events:
                    for event in events:
                        # Only progress resets the count: every reconnection opens with the
                        # current state again, which a stream that keeps failing also sends.
                        if event.id is not None and event.id != last_id:
                            failures, delay = 0, FIRST_RETRY_DELAY
                            last_id = event.id
                        state.apply(event)
                        view.show(event, state)
                        if event.event in TERMINAL_EVENTS:
                            resource = event.data if isinstance(event.data, dict) else {}
                            return Outcome(event.event, resource)
                reason = "the stream ended before its outcome"
            except StreamBroken as exc:
                reason = str(exc)
            failures += 1
            if failures >= MAX_ATTEMPTS_WITHOUT_EVENT:
                raise CliError(f"gave up following after {failures} attempts: {reason}")
            sleep(delay)
            delay = min(MAX_RETRY_DELAY, delay * 2)
    finally:
        view.close()
