"""Keep the Linux text console from drawing over the framebuffer picture."""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

KDSETMODE = 0x4B3A
KDGETMODE = 0x4B3B
KD_TEXT = 0
KD_GRAPHICS = 1

DEFAULT_TTY = Path("/dev/tty")
CURSOR_BLINK = Path("/sys/class/graphics/fbcon/cursor_blink")
HIDE_CURSOR = b"\033[?25l"
SHOW_CURSOR = b"\033[?25h"

Ioctl = Callable[..., Any]


class ConsoleGuard:
    """Switch the console to graphics mode while the picture is on screen.

    ``hide()`` (or entering the ``with`` block) opens the console tty and
    asks the kernel, with the KDSETMODE ioctl, to stop drawing text and the
    cursor. When that is refused (no console, no permission, not a virtual
    terminal) it falls back to turning off the fbcon cursor blink and to
    writing the hide-cursor escape sequence to the tty. ``restore()`` undoes
    whatever was done. No step is fatal: each failure is logged and the
    picture is shown anyway.

    Known limitations: the mode is set on the tty given (by default
    ``/dev/tty0``, the console in the foreground when ``hide()`` runs),
    whichever framebuffer that console is drawn on; and a process killed with
    SIGKILL cannot restore the console, which then stays blank until the next
    ``restore()`` of a later run or a reboot.

    Args:
        tty_path: The console tty to switch.
        blink_path: The fbcon ``cursor_blink`` file used as the fallback.
        ioctl: The ioctl function; tests pass a recording fake.

    """

    def __init__(
        self,
        tty_path: str | os.PathLike[str] = DEFAULT_TTY,
        *,
        blink_path: str | os.PathLike[str] = CURSOR_BLINK,
        ioctl: Ioctl = fcntl.ioctl,
    ) -> None:
        self._tty_path = Path(tty_path)
        self._blink_path = Path(blink_path)
        self._ioctl = ioctl
        self._fd: int | None = None
        self._old_mode: int | None = None
        self._old_blink: str | None = None
        self._escape_written = False
        self._hidden = False

    @property
    def graphics_mode(self) -> bool:
        """Whether the console was switched to graphics mode."""
        return self._old_mode is not None

    @property
    def active(self) -> bool:
        """Whether any of the ways of hiding the console is in effect."""
        return self.graphics_mode or self._old_blink is not None or (
            self._escape_written
        )

    def hide(self) -> None:
        """Stop the console drawing over the screen, as far as permitted."""
        if self._hidden:
            return
        self._hidden = True
        self._fd = self._open_tty()
        if self._fd is not None and self._set_graphics_mode(self._fd):
            return
        self._stop_blink()
        if self._fd is not None:
            self._write_escape(HIDE_CURSOR)

    def restore(self) -> None:
        """Undo what ``hide()`` did; safe to call more than once."""
        if self._old_mode is not None and self._fd is not None:
            self._set_mode(self._fd, self._old_mode)
        self._old_mode = None
        if self._old_blink is not None:
            self._write_blink(self._old_blink)
            self._old_blink = None
        if self._escape_written:
            self._write_escape(SHOW_CURSOR)
            self._escape_written = False
        self._close_tty()
        self._hidden = False

    def __enter__(self) -> ConsoleGuard:
        self.hide()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.restore()

    def _open_tty(self) -> int | None:
        """Open the console tty without making it our controlling terminal."""
        flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            return os.open(self._tty_path, flags)
        except OSError as error:
            log.warning("cannot open console %s to hide the cursor: %s",
                        self._tty_path, error.strerror or error)
            return None

    def _close_tty(self) -> None:
        """Close the console tty if it is open."""
        if self._fd is None:
            return
        try:
            os.close(self._fd)
        except OSError as error:
            log.warning("cannot close console %s: %s", self._tty_path, error)
        self._fd = None

    def _set_graphics_mode(self, fd: int) -> bool:
        """Remember the console mode and switch to graphics; True on success."""
        old_mode = self._get_mode(fd)
        if not self._set_mode(fd, KD_GRAPHICS):
            return False
        self._old_mode = old_mode
        log.info("switched console %s to graphics mode", self._tty_path)
        return True

    def _get_mode(self, fd: int) -> int:
        """Read the console mode, assuming text mode when it cannot be read."""
        buffer = bytearray(4)
        try:
            self._ioctl(fd, KDGETMODE, buffer)
        except OSError as error:
            log.debug("cannot read the mode of %s: %s", self._tty_path, error)
            return KD_TEXT
        return struct.unpack("i", buffer)[0]

    def _set_mode(self, fd: int, mode: int) -> bool:
        """Set the console mode; log and return False when refused."""
        try:
            self._ioctl(fd, KDSETMODE, mode)
        except OSError as error:
            log.warning("cannot set console %s to %s mode: %s", self._tty_path,
                        "graphics" if mode == KD_GRAPHICS else "text",
                        error.strerror or error)
            return False
        return True

    def _stop_blink(self) -> None:
        """Turn off the fbcon cursor blink, remembering the old setting."""
        try:
            old = self._blink_path.read_text(encoding="ascii").strip()
        except OSError as error:
            log.warning("cannot read %s: %s", self._blink_path,
                        error.strerror or error)
            return
        if self._write_blink("0"):
            self._old_blink = old

    def _write_blink(self, value: str) -> bool:
        """Write the fbcon cursor blink setting; log and return False on failure."""
        try:
            self._blink_path.write_text(value, encoding="ascii")
        except OSError as error:
            log.warning("cannot write %s: %s", self._blink_path,
                        error.strerror or error)
            return False
        return True

    def _write_escape(self, sequence: bytes) -> None:
        """Write a cursor escape sequence to the console tty."""
        if self._fd is None:
            return
        try:
            os.write(self._fd, sequence)
        except OSError as error:
            log.warning("cannot write to console %s: %s", self._tty_path,
                        error.strerror or error)
            return
        self._escape_written = sequence == HIDE_CURSOR
