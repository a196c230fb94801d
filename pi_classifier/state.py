"""The live state of a running classifier, shared with the service and web view."""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ShownLabel:
    """One label as shown on screen, after smoothing and aliases."""

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Status:
    """A consistent snapshot of the figures of a running classifier.

    Attributes:
        labels: The labels on screen now, best first.
        display_fps: Frames shown per second, over the last few seconds.
        inference_fps: Frames classified per second.
        inference_ms: Time of the last full classification in milliseconds.
        latency_ms: From capture of a frame to its labels being on screen.
        frames_captured: Frames the source delivered.
        frames_shown: Frames written to the display.
        frames_dropped: Frames the display path failed to show.
        frames_skipped: Frames the worker skipped because it was busy.
        started: ``time.monotonic()`` when the classifier started.
        last_frame: ``time.monotonic()`` of the last frame shown, 0 if none.
        worker_alive: Whether the inference worker thread is running.
        model: The model in use.
        runtime: The inference runtime in use, with its version.
        source: The frame source in use.
        display: The display in use.
        temperature_c: The SoC temperature, or None where it cannot be read.
    """

    labels: tuple[ShownLabel, ...] = ()
    display_fps: float = 0.0
    inference_fps: float = 0.0
    inference_ms: float = 0.0
    latency_ms: float = 0.0
    frames_captured: int = 0
    frames_shown: int = 0
    frames_dropped: int = 0
    frames_skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    last_frame: float = 0.0
    worker_alive: bool = False
    model: str = ""
    runtime: str = ""
    source: str = ""
    display: str = ""
    temperature_c: float | None = None

    @property
    def uptime_s(self) -> float:
        """Seconds since the classifier started."""
        return time.monotonic() - self.started

    def healthy(self, max_age: float = 5.0) -> bool:
        """Whether frames are flowing and the worker is alive."""
        fresh = self.last_frame > 0 and time.monotonic() - self.last_frame <= max_age
        return fresh and self.worker_alive

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON, with uptime and health filled in."""
        data = dataclasses.asdict(self)
        data["labels"] = [dataclasses.asdict(label) for label in self.labels]
        data.pop("started")
        data.pop("last_frame")
        data["uptime_s"] = round(self.uptime_s, 3)
        data["healthy"] = self.healthy()
        return data


class LiveState:
    """The one object through which a running classifier shares its state.

    The display loop and the worker write to it; the service manager and the
    web view read snapshots and the latest annotated frame. All methods are
    thread-safe and never block for long.
    """

    def __init__(self, **initial: Any) -> None:
        self._lock = threading.Lock()
        self._frame_ready = threading.Condition(self._lock)
        self._status = Status(**initial)
        self._frame: np.ndarray | None = None
        self._frame_sequence = 0

    def update(self, **changes: Any) -> None:
        """Change some figures of the status at once."""
        with self._lock:
            self._status = dataclasses.replace(self._status, **changes)

    def snapshot(self) -> Status:
        """Return the current status; it never changes after it is returned."""
        with self._lock:
            return self._status

    def publish_frame(self, image: np.ndarray) -> None:
        """Offer the latest annotated BGR frame to readers such as the web view.

        The array is kept by reference and must not be written to afterwards.
        """
        with self._frame_ready:
            self._frame = image
            self._frame_sequence += 1
            self._frame_ready.notify_all()

    def latest_frame(self) -> tuple[int, np.ndarray | None]:
        """Return (number, image) of the newest published frame."""
        with self._lock:
            return self._frame_sequence, self._frame

    def wait_frame(
        self, after: int, timeout: float
    ) -> tuple[int, np.ndarray | None]:
        """Wait up to ``timeout`` s for a frame newer than number ``after``."""
        with self._frame_ready:
            self._frame_ready.wait_for(
                lambda: self._frame_sequence > after, timeout=timeout
            )
            return self._frame_sequence, self._frame
