"""The inference worker: classifies the newest frame on a thread of its own."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pi_classifier.errors import WorkerError
from pi_classifier.frames import Frame
from pi_classifier.labels import Labels
from pi_classifier.meters import RateMeter
from pi_classifier.smoothing import LabelSmoother

log = logging.getLogger(__name__)


class ScoresModel(Protocol):
    """What the worker needs of a classifier."""

    labels: Labels

    def probabilities(self, image: np.ndarray, order: str = "bgr") -> np.ndarray:
        """Score one picture."""


@dataclass(frozen=True)
class Result:
    """The labels for one classified frame.

    Attributes:
        sequence: The frame's sequence number.
        timestamp: The frame's capture time (``time.monotonic()``).
        shown: (class index, smoothed score) pairs to show, best first.
        labels: The labels of the model that made the result.
        inference_ms: Time the classification took.
        finished: ``time.monotonic()`` when the result was ready.
    """

    sequence: int
    timestamp: float
    shown: tuple[tuple[int, float], ...]
    labels: Labels
    inference_ms: float
    finished: float


class InferenceWorker:
    """Classifies the newest submitted frame; older waiting frames are dropped.

    ``submit`` never blocks, so the display path never waits for inference.
    A classification that raises is logged and the worker goes on; more than
    ``max_failures`` failures within ``failure_window`` seconds stop it, and
    ``check()`` then raises WorkerError for the caller to exit on.

    Args:
        model: The classifier (anything with ``probabilities``).
        smoother: Steadies the scores before they are shown.
        max_failures: Failures tolerated within the window.
        failure_window: The window in seconds.
    """

    def __init__(
        self,
        model: ScoresModel,
        smoother: LabelSmoother,
        *,
        max_failures: int = 5,
        failure_window: float = 30.0,
    ) -> None:
        self._model = model
        self._smoother = smoother
        self._max_failures = max_failures
        self._failure_window = failure_window
        self._failures: list[float] = []
        self._fatal: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: Frame | None = None
        self._result: Result | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.skipped = 0
        self.classified = 0
        self._rate = RateMeter()

    def start(self) -> None:
        """Start the worker thread."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="inference",
                                        daemon=True)
        self._thread.start()

    def submit(self, frame: Frame) -> None:
        """Offer a frame; replaces (drops) any frame still waiting."""
        with self._wake:
            if self._pending is not None:
                self.skipped += 1
            self._pending = frame
            self._wake.notify()

    def latest(self) -> Result | None:
        """The newest result, or None before the first."""
        return self._result

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running and has not given up."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._fatal is None

    @property
    def inference_fps(self) -> float:
        """Classifications per second over the last few seconds."""
        return self._rate.rate()

    def check(self) -> None:
        """Raise WorkerError when the worker has given up."""
        if self._fatal is not None:
            raise WorkerError(self._fatal)

    def swap_model(self, model: ScoresModel) -> None:
        """Use another classifier from the next frame on (no gap)."""
        with self._lock:
            self._model = model
            self._smoother.reset()

    def configure_smoothing(
        self, alpha: float, threshold_high: float, threshold_low: float, top_k: int
    ) -> None:
        """Change smoothing and thresholds from the next frame on."""
        with self._lock:
            self._smoother.configure(alpha, threshold_high, threshold_low, top_k)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and wait for it at most ``timeout`` seconds."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("inference worker did not stop within %.1f s", timeout)

    def _next_frame(self) -> Frame | None:
        """Wait for a frame to classify; None when stopping."""
        with self._wake:
            while self._pending is None and not self._stopping:
                self._wake.wait(0.5)
            if self._stopping:
                return None
            frame, self._pending = self._pending, None
            return frame

    def _run(self) -> None:
        """The thread: run the loop, restarting it after each failure."""
        log.debug("inference worker started")
        while True:
            try:
                self._loop()
                break
            except Exception as error:
                if not self._record_failure(error):
                    break
                log.warning("restarting the inference loop")
        log.debug("inference worker stopped")

    def _loop(self) -> None:
        """Classify frames until stopped; a failure propagates to ``_run``."""
        while True:
            frame = self._next_frame()
            if frame is None:
                return
            self._classify(frame)

    def _classify(self, frame: Frame) -> None:
        """Classify one frame and publish its result."""
        started = time.monotonic()
        with self._lock:
            model, smoother = self._model, self._smoother
        if frame.model_input is not None:
            probabilities = model.probabilities(frame.model_input, "rgb")
        else:
            probabilities = model.probabilities(frame.image, "bgr")
        with self._lock:
            if model is not self._model:
                return
            shown = smoother.update(probabilities)
        finished = time.monotonic()
        self._result = Result(frame.sequence, frame.timestamp, tuple(shown),
                              model.labels, (finished - started) * 1000, finished)
        self.classified += 1
        self._rate.tick(finished)

    def _record_failure(self, error: Exception) -> bool:
        """Log a failure; return False when there were too many."""
        now = time.monotonic()
        self._failures = [t for t in self._failures if now - t < self._failure_window]
        self._failures.append(now)
        log.error("classification failed (%d in %.0f s): %s", len(self._failures),
                  self._failure_window, error, exc_info=True)
        if len(self._failures) > self._max_failures:
            self._fatal = (f"inference failed {len(self._failures)} times in "
                           f"{self._failure_window:.0f} s; last error: {error}")
            return False
        time.sleep(min(0.1 * len(self._failures), 1.0))
        return True
