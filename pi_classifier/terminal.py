"""The kiosk's keyboard: keys typed on the Pi must not stop the classifier."""

from __future__ import annotations

import contextlib
import logging
import sys
import termios
from collections.abc import Iterator
from typing import TextIO

log = logging.getLogger(__name__)


@contextlib.contextmanager
def keyboard_signals_off(stream: TextIO | None = None) -> Iterator[bool]:
    """Stop Ctrl+C, Ctrl+Z and the quit key on a terminal reaching the program.

    Under the service unit the first console is standard input, so a
    keyboard plugged into the Pi types into it: without this, Ctrl+C would
    stop the kiosk cleanly (exit 0) and systemd would not restart it. Echo
    and line editing are turned off too, so typed keys draw nothing. The
    old settings are restored on exit. Not a terminal: nothing is changed.

    Yields:
        Whether the terminal settings were changed.
    """
    stream = sys.stdin if stream is None else stream
    try:
        descriptor = stream.fileno()
        saved = termios.tcgetattr(descriptor)
    except (OSError, ValueError, AttributeError, termios.error):
        yield False
        return
    quiet = list(saved)
    quiet[3] &= ~(termios.ISIG | termios.ICANON | termios.ECHO)
    try:
        termios.tcsetattr(descriptor, termios.TCSANOW, quiet)
    except termios.error as error:
        log.warning("cannot turn off the keyboard's signal keys: %s", error)
        yield False
        return
    log.debug("keyboard signal keys off on the terminal")
    try:
        yield True
    finally:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(descriptor, termios.TCSANOW, saved)
