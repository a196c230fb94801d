"""The frame record that sources hand to the display and inference paths."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured picture.

    Attributes:
        image: The picture to show, BGR uint8, height x width x 3. With the
            DRM display this may be a small placeholder, since the camera
            picture goes to the screen without passing through the CPU.
        sequence: Increases by one for each frame the source delivers.
        timestamp: ``time.monotonic()`` when the frame was captured.
        model_input: An RGB uint8 picture already sized for the model (the
            Picamera2 lores stream), or None to derive it from ``image``.
    """

    image: np.ndarray
    sequence: int
    timestamp: float
    model_input: np.ndarray | None = None
