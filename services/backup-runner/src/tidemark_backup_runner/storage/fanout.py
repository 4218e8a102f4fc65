"""One artifact streamed to every destination at once, each writer on a thread of its own.

The producer (pg_dump's reader, or a base backup's) writes each chunk once; every
destination gets it through its own bounded queue, so a slow destination holds the others
back only once its queue is full, and a destination that fails is dropped (this attempt's
copy there aborted) while the others go on. The artifact fails only when every
destination has failed; ``seal`` says which destinations hold a sealed, verified copy.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidemark_platform.logging import get_logger

if TYPE_CHECKING:
    from tidemark_backup_runner.storage import ArtifactWriter

log = get_logger(__name__)

# Chunks waiting per destination at most (the dump writes chunks of up to ~1 MiB).
QUEUE_CHUNKS = 16
# How often a producer blocked on a full queue looks whether that destination failed.
POLL_SECONDS = 0.2


class AllDestinationsFailed(OSError):
    """No destination can take the artifact any more; the message says why for each."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class _Seal:
    manifest: Mapping[str, Any]


_ABORT = object()
_END = object()


@dataclass
class Lane:
    """One destination's writer, its queue and thread, and how it ended."""

    index: int
    writer: ArtifactWriter
    queue: queue.Queue[Any] = field(default_factory=lambda: queue.Queue(QUEUE_CHUNKS))
    error: str | None = None
    sealed: bool = False
    thread: threading.Thread | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


class FanOut:
    """Streams to ``writers`` at once; ``open``/``write`` from the producer's thread, then
    ``seal`` (or ``abort``). Satisfies what ``pgtools.dump_database`` writes to."""

    def __init__(self, writers: Sequence[ArtifactWriter], *, queue_chunks: int = QUEUE_CHUNKS):
        self.lanes = [
            Lane(i, writer, queue.Queue(queue_chunks)) for i, writer in enumerate(writers)
        ]
        self._started = False
        self._closed = False

    def open(self) -> None:
        if self._started:
            return
        self._started = True
        for lane in self.lanes:
            # The backup's log context goes along, so a destination's lines name the backup.
            context = contextvars.copy_context()
            lane.thread = threading.Thread(
                target=context.run,
                args=(self._run, lane),
                daemon=True,
                name=f"destination-{lane.index}",
            )
            lane.thread.start()

    def write(self, chunk: bytes) -> None:
        if self._closed:
            raise AllDestinationsFailed("the artifact's destinations were closed")
        for lane in self.lanes:
            while not lane.failed and not self._closed:
                try:
                    lane.queue.put(chunk, timeout=POLL_SECONDS)
                    break
                except queue.Full:
                    continue
        if all(lane.failed for lane in self.lanes):
            raise AllDestinationsFailed(self.reasons())

    def seal(self, manifest: Mapping[str, Any]) -> None:
        """Finish every destination's copy and seal it with ``manifest``; raises
        ``AllDestinationsFailed`` when none holds a sealed copy."""
        self._finish(_Seal(manifest))
        if not any(lane.sealed for lane in self.lanes):
            raise AllDestinationsFailed(self.reasons())

    def abort(self) -> None:
        """Stop every destination, aborting this attempt's unsealed copies; safe often."""
        if not self._started:
            for lane in self.lanes:
                lane.writer.abort()
            return
        self._finish(_ABORT)

    def reasons(self) -> str:
        return "; ".join(lane.error for lane in self.lanes if lane.error) or "no destination"

    def _finish(self, last: Any) -> None:
        self._closed = True
        for lane in self.lanes:
            if lane.thread is None or not lane.thread.is_alive():
                continue
            # A failed lane keeps draining its queue, so this never waits on a full one
            # for longer than the lane takes to notice.
            lane.queue.put(last)
        for lane in self.lanes:
            if lane.thread is not None:
                lane.thread.join()

    def _run(self, lane: Lane) -> None:
        writer = lane.writer
        ended = False  # the producer's last item (seal or abort) was taken
        try:
            writer.open()
            while True:
                item = lane.queue.get()
                if item is _ABORT:
                    ended = True
                    writer.abort()
                    return
                if isinstance(item, _Seal):
                    ended = True
                    writer.seal(item.manifest)
                    lane.sealed = True
                    return
                writer.write(item)
        except Exception as exc:
            lane.error = _reason(exc)
            log.warning("destination_failed", destination=lane.index, reason=lane.error)
            try:
                writer.abort()
            except Exception as cleanup:
                log.warning("destination_abort_failed", destination=lane.index, error=repr(cleanup))
            # Drained until the producer ends, so it never blocks on this lane again.
            while not ended:
                item = lane.queue.get()
                ended = item is _ABORT or isinstance(item, _Seal)


def _reason(exc: Exception) -> str:
    """Why a destination failed: a storage error's own words and what it names (relative
    to the organization's directory, or the artifact's key; never a runner's path)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__
