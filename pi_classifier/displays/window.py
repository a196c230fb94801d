"""A desktop window display through OpenCV's HighGUI, for development."""

from __future__ import annotations

import logging
import os
import sys

import cv2
import numpy as np

from pi_classifier.config import DisplayConfig
from pi_classifier.displays.base import Display
from pi_classifier.errors import DisplayError

log = logging.getLogger(__name__)

WINDOW_TITLE = "pi-classifier"
_UI_BACKENDS = ("GTK", "QT", "WIN32 UI", "COCOA", "WAYLAND")
_QUIT_KEYS = (ord("q"), 27)


def gui_backends(build_information: str) -> list[str]:
    """List the window toolkits named in ``cv2.getBuildInformation()`` text.

    Args:
        build_information: The text OpenCV reports about its build.

    Returns:
        The toolkits found in its GUI section, empty for a headless build.

    """
    lines = build_information.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if line.strip().startswith("GUI:")), None)
    if start is None:
        return []
    found = []
    value = lines[start].split(":", 1)[1].strip()
    if value and value.upper() != "NONE":
        found.append(value)
    indent = len(lines[start]) - len(lines[start].lstrip())
    for line in lines[start + 1:]:
        if not line.strip() or len(line) - len(line.lstrip()) <= indent:
            break
        key, _, answer = line.strip().partition(":")
        toolkit = key.strip().upper()
        if toolkit.startswith(_UI_BACKENDS) and answer.strip().upper().startswith(
            "YES"
        ):
            found.append(key.strip())
    return found


def _has_screen_session() -> bool:
    """Whether a window could appear: always off Linux, else an X or Wayland."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def window_supported() -> bool:
    """Whether OpenCV can open a window here.

    The build must include a window toolkit and, on Linux, a desktop session
    must be reachable (DISPLAY or WAYLAND_DISPLAY set). The session check comes
    first because GTK and Qt end the whole process, rather than raising, when
    they cannot reach a display.

    Returns:
        True when ``WindowDisplay.open()`` can be expected to work.

    """
    backends = gui_backends(cv2.getBuildInformation())
    if not backends:
        log.debug("OpenCV %s was built without a window toolkit", cv2.__version__)
        return False
    if not _has_screen_session():
        log.debug("no DISPLAY or WAYLAND_DISPLAY: no desktop to open a window on")
        return False
    return True


class WindowDisplay(Display):
    """Frames shown in a resizable OpenCV window.

    Pressing q or Esc in the window, or closing it, sets ``closed_by_user``;
    the caller decides whether to stop. HighGUI is not thread-safe: open,
    show and close from one thread.

    Args:
        display: The display section of the configuration; unused, taken so
            every display is built the same way.
        title: The window title.

    """

    name = "window"

    def __init__(
        self, display: DisplayConfig | None = None, *, title: str = WINDOW_TITLE
    ) -> None:
        self._title = title
        self._open = False
        self.closed_by_user = False

    @property
    def size(self) -> tuple[int, int] | None:
        """Always None: the window takes any size and scales the frame itself."""
        return None

    def open(self) -> None:
        """Create the window; does nothing when already open.

        Raises:
            DisplayError: OpenCV has no window support here.

        """
        if self._open:
            return
        if not window_supported():
            raise DisplayError(
                "cannot open a window: this OpenCV has no window toolkit (the "
                "headless build) or there is no desktop session (DISPLAY unset)"
            )
        try:
            cv2.namedWindow(self._title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
        except cv2.error as error:
            raise DisplayError(f"cannot open a window: {error.err}") from None
        self._open = True

    def show(self, image: np.ndarray) -> None:
        """Show one BGR frame and handle the window's events for 1 ms.

        Args:
            image: The frame, BGR uint8, height x width x 3.

        Raises:
            DisplayError: The window is not open or OpenCV refused the frame.

        """
        if not self._open:
            raise DisplayError("the window display is not open")
        try:
            cv2.imshow(self._title, image)
            key = cv2.waitKey(1)
            visible = cv2.getWindowProperty(self._title, cv2.WND_PROP_VISIBLE)
        except cv2.error as error:
            raise DisplayError(f"cannot show the frame: {error.err}") from None
        if (key & 0xFF) in _QUIT_KEYS or visible < 1:
            self.closed_by_user = True

    def close(self) -> None:
        """Destroy the window; safe to call twice."""
        if not self._open:
            return
        self._open = False
        try:
            cv2.destroyWindow(self._title)
            cv2.waitKey(1)
        except cv2.error as error:
            log.warning("cannot close the window: %s", error.err)
