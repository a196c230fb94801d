"""The DRM display: Picamera2 shows the camera itself, we only draw the overlay."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import numpy as np

from pi_classifier.config import DisplayConfig
from pi_classifier.displays.base import Display
from pi_classifier.errors import DisplayError
from pi_classifier.sources.base import FrameSource
from pi_classifier.sources.picamera2 import Picamera2Source

log = logging.getLogger(__name__)

#: Where the kernel lists DRM connectors, their status and their modes.
DRM_SYSFS = Path("/sys/class/drm")
#: The DRM devices the preview can use.
DRI_GLOB = "/dev/dri/card*"
#: Set in a desktop session, whose compositor owns the screen.
_DESKTOP_VARIABLES = ("WAYLAND_DISPLAY", "DISPLAY")


def screen_size(sysfs: Path | None = None) -> tuple[int, int] | None:
    """Find the size of the first connected screen's preferred mode.

    Args:
        sysfs: The DRM class folder; DRM_SYSFS when None.

    Returns:
        (width, height), or None when no connected screen reports a mode.

    """
    for status in sorted((sysfs or DRM_SYSFS).glob("card*-*/status")):
        try:
            if status.read_text().strip() != "connected":
                continue
            modes = (status.parent / "modes").read_text().split()
        except OSError as error:
            log.debug("cannot read %s: %s", status.parent, error)
            continue
        size = _parse_mode(modes[0]) if modes else None
        if size is not None:
            return size
    return None


def _parse_mode(mode: str) -> tuple[int, int] | None:
    """Read a mode such as ``1920x1080`` or ``1920x1080i``."""
    width, _, height = mode.partition("x")
    digits = "".join(c for c in height if c.isdigit())
    if not width.isdigit() or not digits:
        return None
    return int(width), int(digits)


def _fit(screen: tuple[int, int], picture: tuple[int, int]) -> tuple[int, int]:
    """Scale a picture to fit the screen, keeping its aspect ratio.

    This is how Picamera2's DRM preview letterboxes the camera picture, and
    the overlay is stretched over that same rectangle.
    """
    screen_w, screen_h = screen
    width, height = picture
    if width * screen_h > screen_w * height:
        return screen_w, screen_w * height // width
    return screen_h * width // height, screen_h


class DrmDisplay(Display):
    """The camera picture put on the screen by Picamera2's DRM preview.

    The picture never passes through the CPU; the labels and figures are an
    RGBA overlay on a second DRM plane, replaced only when they change.
    """

    name = "drm"
    composites_overlay = True

    def __init__(self, display: DisplayConfig, source: Picamera2Source) -> None:
        self._config = display
        self._source = source
        self._screen: tuple[int, int] | None = None
        self._open = False

    @staticmethod
    def supported(source: FrameSource) -> bool:
        """Tell whether the DRM display can show this source here.

        Args:
            source: The frame source.

        Returns:
            True for a Picamera2 source on a console with a DRM device; a
            desktop session owns the screen, so there it is False.

        """
        if not isinstance(source, Picamera2Source):
            return False
        desktop = [name for name in _DESKTOP_VARIABLES if os.environ.get(name)]
        if desktop:
            log.debug("not using DRM: a desktop session is running (%s)", desktop[0])
            return False
        return bool(glob.glob(DRI_GLOB))

    @property
    def size(self) -> tuple[int, int] | None:
        """The size the overlay is drawn at: the camera picture on the screen."""
        picture = self._source.main_size
        if self._screen is None:
            return picture
        return _fit(self._screen, picture)

    def open(self) -> None:
        """Start the full-screen DRM preview and check the overlay plane.

        Raises:
            DisplayError: The preview cannot start or the screen has no plane
                for the overlay.
            SourceError: The camera cannot be opened or sends no frame.

        """
        if self._open:
            return
        self._screen = screen_size()
        width, height = self._screen or self._source.main_size
        self._source.start_drm_preview((0, 0, width, height))
        self._open = True
        try:
            self._source.open()
            self._source.check_overlay()
        except BaseException:
            self.close()
            raise
        log.info(
            "DRM preview on a %dx%d screen%s",
            width, height, "" if self._screen else " (size unknown: camera size used)",
        )

    def show_overlay(self, rgba: np.ndarray) -> None:
        """Replace the overlay drawn over the camera picture.

        Args:
            rgba: The overlay, height x width x 4 uint8; the preview stretches
                it over the picture, so it is best drawn at ``size``.

        Raises:
            DisplayError: The overlay is not RGBA uint8, the display is not
                open, or the screen refused it.

        """
        if not self._open:
            raise DisplayError("the DRM display is not open")
        if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
            raise DisplayError(
                f"the overlay must be an RGBA uint8 picture, not {rgba.dtype} "
                f"with shape {rgba.shape}"
            )
        self._source.set_overlay(rgba)

    def close(self) -> None:
        """Stop the preview; the camera reopens without it at the next read."""
        if not self._open:
            return
        self._open = False
        self._source.stop_drm_preview()
        log.info("DRM preview stopped")
