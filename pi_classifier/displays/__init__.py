"""Displays, and the factory that picks one from the configuration."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from pi_classifier.config import DisplayConfig
from pi_classifier.displays.base import Display
from pi_classifier.errors import DisplayError
from pi_classifier.sources.base import FrameSource

log = logging.getLogger(__name__)

__all__ = ["Display", "create_display"]


def create_display(display: DisplayConfig, source: FrameSource) -> Display:
    """Build and open the display the configuration asks for.

    ``display.output`` picks it: ``framebuffer``, ``window`` and ``null``
    are used as they are; ``drm`` falls back to the framebuffer when it
    fails and ``display.fallback`` is ``framebuffer``; ``auto`` tries, in
    turn, DRM (for a Picamera2 source, when DRM is supported), the
    framebuffer (when ``display.device`` exists and is writable), a window
    (when OpenCV has window support) and lastly the null display.

    The display is always returned open, because the only honest test of
    whether a screen works is opening it; the caller must not open it again
    and must close it (``contextlib.closing`` fits).

    Args:
        display: The display section of the configuration.
        source: The frame source; the DRM display draws its picture.

    Returns:
        An opened display.

    Raises:
        DisplayError: The requested display (and its fallback) cannot be opened.

    """
    chosen = _CHOOSERS[display.output](display, source)
    log.info("showing frames on the %s display", chosen.name)
    return chosen


def _opened(candidate: Display) -> Display:
    """Open a display, releasing what it took when opening fails."""
    try:
        candidate.open()
    except DisplayError:
        candidate.close()
        raise
    return candidate


def _first_that_opens(make: Callable[[], Display], what: str) -> Display | None:
    """Build and open a display for ``auto``; None, logged, when it fails."""
    try:
        return make()
    except DisplayError as error:
        log.warning("not using the %s display: %s", what, error)
        return None


def _open_drm(display: DisplayConfig, source: FrameSource) -> Display:
    """Build and open the DRM display, which only a Picamera2 source can feed."""
    try:
        from pi_classifier.displays.drm import DrmDisplay
        from pi_classifier.sources.picamera2 import Picamera2Source
    except ImportError as error:
        raise DisplayError(f"the DRM display cannot be loaded: {error}") from None
    if not isinstance(source, Picamera2Source):
        raise DisplayError(
            "the DRM display shows only the Picamera2 camera (camera.source: "
            f"picamera2), not the {source.name} source"
        )
    return _opened(DrmDisplay(display, source))


def _open_framebuffer(display: DisplayConfig) -> Display:
    """Build and open the framebuffer display."""
    from pi_classifier.displays.framebuffer import FramebufferDisplay

    return _opened(FramebufferDisplay(display))


def _open_window(display: DisplayConfig) -> Display:
    """Build and open the window display."""
    from pi_classifier.displays.window import WindowDisplay

    return _opened(WindowDisplay(display))


def _open_null(display: DisplayConfig) -> Display:
    """Build and open the null display."""
    from pi_classifier.displays.null import NullDisplay

    return _opened(NullDisplay(display))


def _drm_fits(source: FrameSource) -> bool:
    """Whether the source is a Picamera2 source the DRM display supports."""
    try:
        from pi_classifier.sources.picamera2 import Picamera2Source
    except ImportError as error:
        log.debug("no Picamera2 source to show through DRM: %s", error)
        return False
    if not isinstance(source, Picamera2Source):
        return False
    try:
        from pi_classifier.displays.drm import DrmDisplay
    except ImportError as error:
        log.warning("the DRM display cannot be loaded: %s", error)
        return False
    return bool(DrmDisplay.supported(source))


def _framebuffer_writable(device: str) -> bool:
    """Whether the framebuffer device exists and this process may write it."""
    return os.path.exists(device) and os.access(device, os.W_OK)


def _window_supported() -> bool:
    """Whether OpenCV can open a window here."""
    from pi_classifier.displays import window

    return window.window_supported()


def _auto(display: DisplayConfig, source: FrameSource) -> Display:
    """Use the best screen that opens, down to the null display."""
    if _drm_fits(source):
        chosen = _first_that_opens(lambda: _open_drm(display, source), "DRM")
        if chosen is not None:
            return chosen
    if _framebuffer_writable(display.device):
        chosen = _first_that_opens(lambda: _open_framebuffer(display), "framebuffer")
        if chosen is not None:
            return chosen
    if _window_supported():
        chosen = _first_that_opens(lambda: _open_window(display), "window")
        if chosen is not None:
            return chosen
    log.warning("no screen to show frames on (framebuffer %s is missing or not "
                "writable and there is no window support): frames will not be "
                "shown", display.device)
    return _open_null(display)


def _drm(display: DisplayConfig, source: FrameSource) -> Display:
    """Use DRM, or the framebuffer when DRM fails and the fallback allows it."""
    try:
        return _open_drm(display, source)
    except DisplayError as error:
        if display.fallback != "framebuffer":
            raise
        log.warning("the DRM display failed (%s); using framebuffer %s instead",
                    error, display.device)
    return _open_framebuffer(display)


_CHOOSERS: dict[str, Callable[[DisplayConfig, FrameSource], Display]] = {
    "auto": _auto,
    "drm": _drm,
    "framebuffer": lambda display, source: _open_framebuffer(display),
    "window": lambda display, source: _open_window(display),
    "null": lambda display, source: _open_null(display),
}
