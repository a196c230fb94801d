"""The interface every display follows."""

from __future__ import annotations

import abc
import logging
from types import TracebackType

import numpy as np

log = logging.getLogger(__name__)


class Display(abc.ABC):
    """A screen the annotated picture is shown on.

    Displays are context managers; ``close()`` is safe to call twice.

    Attributes:
        composites_overlay: True when the display shows the camera picture by
            itself (the DRM preview) and only wants the overlay, through
            ``show_overlay``; False when it wants whole annotated frames
            through ``show``.
    """

    name = "display"
    composites_overlay = False

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the screen.

        Raises:
            DisplayError: The screen cannot be opened; the message says why.
        """

    @property
    @abc.abstractmethod
    def size(self) -> tuple[int, int] | None:
        """The drawable size as (width, height), or None when it has none."""

    def show(self, image: np.ndarray) -> None:
        """Show one BGR uint8 frame, scaled and letterboxed to fit."""
        raise NotImplementedError(f"the {self.name} display does not take frames")

    def show_overlay(self, rgba: np.ndarray) -> None:
        """Replace the overlay drawn over the camera picture (RGBA uint8)."""
        raise NotImplementedError(f"the {self.name} display takes whole frames")

    @abc.abstractmethod
    def close(self) -> None:
        """Release the screen and restore the console; safe to call twice."""

    def __enter__(self) -> Display:
        self.open()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
