"""Helpers shared by the tests: the runtime under test, text in pixels, and a
feeder that publishes frames like the live app."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from pi_classifier.overlay import FONT
from pi_classifier.state import LiveState

#: The runtime the suite runs under (.ci/run runs it under each in turn).
RUNTIME = os.environ.get("PI_CLASSIFIER_TEST_RUNTIME", "auto")


def text_score(image: np.ndarray, text: str, scale: float, thickness: int) -> float:
    """How well ``text``, drawn as the overlay draws it, matches bright pixels.

    Both the picture and a freshly drawn template are reduced to "white text"
    masks, so the translucent panel and the photo behind it do not matter.

    Returns:
        The best normalised correlation, 1.0 for a perfect match.
    """
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    pad = thickness + 2
    template = np.zeros((height + baseline + 2 * pad, width + 2 * pad), np.uint8)
    cv2.putText(template, text, (pad, pad + height), FONT, scale, 255, thickness,
                cv2.LINE_AA)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    mask = np.where(grey > 200, 255, 0).astype(np.uint8)
    template = np.where(template > 127, 255, 0).astype(np.uint8)
    if mask.shape[0] < template.shape[0] or mask.shape[1] < template.shape[1]:
        return 0.0
    return float(cv2.matchTemplate(mask, template, cv2.TM_CCOEFF_NORMED).max())


class Feeder:
    """Publishes frames and status figures into a LiveState, like the app.

    Args:
        state: Where to publish.
        make: The picture for frame number ``i``.
        period: Seconds between frames.
    """

    def __init__(self, state: LiveState, make: Callable[[int], np.ndarray],
                 period: float = 0.02) -> None:
        self.state = state
        self.period = period
        self.make = make
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            image = self.make(self.published)
            self.state.publish_frame(image)
            self.published += 1
            self.state.update(
                last_frame=time.monotonic(), frames_shown=self.published,
                frames_captured=self.published, worker_alive=True,
            )
            self._stop.wait(self.period)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive()
