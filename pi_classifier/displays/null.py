"""A display that shows nothing, for headless runs and tests."""

from __future__ import annotations

import logging

import numpy as np

from pi_classifier.config import DisplayConfig
from pi_classifier.displays.base import Display
from pi_classifier.errors import DisplayError

log = logging.getLogger(__name__)


class NullDisplay(Display):
    """Takes frames and throws them away, counting them.

    Args:
        display: The display section of the configuration; unused, taken so
            every display is built the same way.

    Attributes:
        frames_shown: How many frames ``show`` was given while open.

    """

    name = "null"

    def __init__(self, display: DisplayConfig | None = None) -> None:
        self.frames_shown = 0
        self._open = False

    @property
    def size(self) -> tuple[int, int] | None:
        """Always None: there is no screen."""
        return None

    def open(self) -> None:
        """Start taking frames; does nothing when already open."""
        if not self._open:
            log.info("no display: frames are not shown anywhere")
        self._open = True

    def show(self, image: np.ndarray) -> None:
        """Count one frame.

        Args:
            image: The frame, which is not looked at.

        Raises:
            DisplayError: The display is not open.

        """
        if not self._open:
            raise DisplayError("the null display is not open")
        self.frames_shown += 1

    def close(self) -> None:
        """Stop taking frames; safe to call twice."""
        self._open = False
