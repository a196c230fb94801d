"""Pieces the sources share: pacing on monotonic deadlines and file ordering."""

from __future__ import annotations

import abc
import logging
import re
import threading
import time

import numpy as np

from pi_classifier.errors import SourceError
from pi_classifier.frames import Frame
from pi_classifier.sources.base import FrameSource

log = logging.getLogger(__name__)

#: How long close() waits for a read() on another thread to finish its step.
CLOSE_TIMEOUT = 5.0

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``img2`` before ``img10`` and ``video2`` before ``video10``.

    Args:
        name: A file name or path.

    Returns:
        A key comparing digit runs as numbers and the rest case-insensitively.

    """
    parts = _DIGITS.split(name)
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part.casefold()) for part in parts
    )


class Pacer:
    """Spaces frames ``1 / fps`` apart on monotonic deadlines.

    Each deadline is the previous one plus one interval, so the small delays
    of waking up do not add up into drift. A consumer that falls more than an
    interval behind restarts the schedule from now: it gets the next frame at
    once and the following ones at the normal rate, never a burst.
    """

    def __init__(self, fps: float, stop: threading.Event) -> None:
        if fps <= 0:
            raise SourceError(f"a frame rate must be above zero, not {fps}")
        self.interval = 1.0 / fps
        self._stop = stop
        self._due: float | None = None

    def wait(self, deadline: float, what: str) -> None:
        """Sleep until the next frame is due, but never past ``deadline``.

        Args:
            deadline: ``time.monotonic()`` after which to give up.
            what: The source, for error messages.

        Raises:
            SourceError: The frame is not due before ``deadline`` (after
                sleeping until the deadline), or the stop event was set.

        """
        now = time.monotonic()
        if self._due is None or now - self._due > self.interval:
            self._due = now

        if self._due > deadline:
            self._sleep(deadline - now, what)
            raise SourceError(
                f"timed out waiting for a frame from {what}: the next one is due "
                f"{self._due - deadline:.2f} s after the timeout"
            )

        self._sleep(self._due - now, what)
        self._due += self.interval

    def _sleep(self, seconds: float, what: str) -> None:
        """Sleep, waking early and failing when the source is closed."""
        if self._stop.wait(max(seconds, 0.0)):
            raise SourceError(f"{what} was closed while waiting for a frame")


class PacedSource(FrameSource):
    """A source that makes its own frames and hands them out at a fixed rate.

    Subclasses open their files in ``_start`` (returning the frame rate),
    produce one BGR picture per call of ``_next_image`` and let go of their
    files in ``_finish``. A picture made before a read timed out is kept and
    delivered by the next read, so no picture is lost.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self.fps = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pacer: Pacer | None = None
        self._pending: np.ndarray | None = None
        self._sequence = 0

    @abc.abstractmethod
    def _start(self) -> float:
        """Open the files and return the rate to deliver frames at."""

    @abc.abstractmethod
    def _next_image(self) -> np.ndarray:
        """Return the next picture to deliver, BGR uint8."""

    def _finish(self) -> None:
        """Let go of the files; called once per successful open."""

    def open(self) -> None:
        """Open the source; opening an open source does nothing.

        Raises:
            SourceError: The source cannot be opened; the message says why.

        """
        if self._pacer is not None:
            return

        self._stop.clear()
        self._sequence = 0
        self._pending = None
        self.fps = self._start()
        self._pacer = Pacer(self.fps, self._stop)
        log.info("opened %s at %.3g fps", self.description, self.fps)

    def read(self, timeout: float) -> Frame:
        """Return the next frame once it is due, waiting at most ``timeout`` s.

        Args:
            timeout: The longest time to wait, in seconds.

        Returns:
            The frame, stamped with ``time.monotonic()`` when it was handed out.

        Raises:
            SourceError: The source is not open, was closed meanwhile, or the
                next frame is not due within ``timeout``.

        """
        deadline = time.monotonic() + timeout
        pacer = self._pacer
        if pacer is None:
            raise SourceError(f"{self.description} is not open")

        self._prepare(deadline)
        pacer.wait(deadline, self.description)

        image, self._pending = self._pending, None
        frame = Frame(image=image, sequence=self._sequence, timestamp=time.monotonic())
        self._sequence += 1
        return frame

    def _prepare(self, deadline: float) -> None:
        """Make the next picture unless one is already waiting to go out."""
        if not self._lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise SourceError(f"timed out waiting for {self.description}: it is busy")

        try:
            if self._pacer is None:
                raise SourceError(f"{self.description} was closed")
            if self._pending is None:
                self._pending = self._next_image()
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop any waiting read and let go of the files; safe to call twice."""
        self._stop.set()
        if not self._lock.acquire(timeout=CLOSE_TIMEOUT):
            log.warning("%s is still busy in a read; not closing it", self.description)
            return

        try:
            if self._pacer is not None:
                self._pacer = None
                self._pending = None
                self._finish()
                log.info("closed %s", self.description)
        finally:
            self._lock.release()
