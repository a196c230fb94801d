"""A generated test picture: moving colour bars with the frame number."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from pi_classifier.config import CameraConfig
from pi_classifier.sources.common import PacedSource

log = logging.getLogger(__name__)

#: The classic bars, left to right, in BGR: white, yellow, cyan, green,
#: magenta, red, blue, black.
BARS_BGR = (
    (255, 255, 255),
    (0, 255, 255),
    (255, 255, 0),
    (0, 255, 0),
    (255, 0, 255),
    (0, 0, 255),
    (255, 0, 0),
    (0, 0, 0),
)

#: Seconds the bars take to move by the whole width of the picture.
SWEEP_SECONDS = 4.0


def render_strip(width: int, height: int) -> np.ndarray:
    """Draw the pattern twice side by side, so any window of it is one shift.

    Args:
        width: The width of one picture.
        height: The height of one picture.

    Returns:
        A BGR uint8 array of height x (2 * width): colour bars over the top
        two thirds and a grey ramp below.

    """
    columns = np.arange(width)
    bar_of_column = columns * len(BARS_BGR) // width
    bars_row = np.asarray(BARS_BGR, dtype=np.uint8)[bar_of_column]
    ramp_row = np.repeat((columns * 255 // max(width - 1, 1)).astype(np.uint8), 3)
    ramp_row = ramp_row.reshape(width, 3)

    bars_height = height * 2 // 3
    picture = np.empty((height, width, 3), dtype=np.uint8)
    picture[:bars_height] = bars_row
    picture[bars_height:] = ramp_row
    return np.concatenate([picture, picture], axis=1)


class TestPatternSource(PacedSource):
    """Frames drawn by the program itself, for trying things without a camera.

    The pattern is rendered once; each frame is a shifted window of it with
    the frame number written on, so frames are cheap and all differ.
    """

    __test__ = False  # not a pytest test class, despite its name
    name = "test-pattern"

    def __init__(self, camera: CameraConfig) -> None:
        super().__init__(f"test pattern {camera.width}x{camera.height}")
        self._width = camera.width
        self._height = camera.height
        self._rate = camera.fps
        self._step = max(1, round(camera.width / (camera.fps * SWEEP_SECONDS)))
        self._strip: np.ndarray | None = None
        self._font_scale = max(camera.height / 480, 0.3)

    def _start(self) -> float:
        """Render the pattern once."""
        self._strip = render_strip(self._width, self._height)
        return self._rate

    def _next_image(self) -> np.ndarray:
        """Cut the window for the next frame and write its number on it."""
        assert self._strip is not None
        offset = (self._sequence * self._step) % self._width
        image = self._strip[:, offset : offset + self._width].copy()
        self._draw_number(image, self._sequence)
        return image

    def _draw_number(self, image: np.ndarray, number: int) -> None:
        """Write the frame number in white on a black box, top left."""
        text = f"frame {number}"
        font = cv2.FONT_HERSHEY_SIMPLEX
        thickness = max(1, round(self._font_scale * 2))
        (text_width, text_height), base = cv2.getTextSize(
            text, font, self._font_scale, thickness
        )
        margin = max(2, text_height // 3)
        box_bottom = text_height + base + 2 * margin
        cv2.rectangle(
            image, (0, 0), (text_width + 2 * margin, box_bottom), (0, 0, 0), -1
        )
        cv2.putText(
            image,
            text,
            (margin, margin + text_height),
            font,
            self._font_scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )

    def _finish(self) -> None:
        """Drop the rendered pattern."""
        self._strip = None
