"""A small download progress bar for the terminal that never raises."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import TextIO

log = logging.getLogger(__name__)

STEP_PERCENT = 25
REDRAW_SECONDS = 0.1


def format_bytes(count: int) -> str:
    """Format a byte count for people: kB below a megabyte, else MB.

    Args:
        count: A number of bytes.

    Returns:
        For example ``"22 kB"`` or ``"3.6 MB"``.

    """
    if count < 1_000_000:
        return f"{count / 1000:.0f} kB"
    return f"{count / 1_000_000:.1f} MB"


class ProgressBar:
    """Show how far a download is, on stderr or another text stream.

    Call it as ``bar(done, total)``. On a terminal it redraws one line with a
    bar, the percentage and the amount; elsewhere (a pipe, the journal) it
    writes a plain line at 0, 25, 50, 75 and 100 percent, or only a final
    line from :meth:`close` when the total is unknown. Errors writing to the
    stream are ignored, so a closed terminal never breaks a download.
    """

    def __init__(
        self, label: str, stream: TextIO | None = None, *, width: int = 30
    ) -> None:
        """Create a bar.

        Args:
            label: What is downloading, shown at the start of the line.
            stream: Where to write; None means ``sys.stderr``.
            width: The number of characters of the bar itself.

        """
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = max(1, width)
        self._tty = _is_tty(self.stream)
        self._done = 0
        self._total: int | None = None
        self._next_step = 0
        self._line_length = 0
        self._last_draw = 0.0
        self._last_percent: int | None = -1
        self._finished = False

    def __call__(self, done: int, total: int | None) -> None:
        """Record progress and redraw when something visible changed.

        Args:
            done: Bytes received so far.
            total: Bytes expected in all, or None when unknown.

        """
        try:
            self._update(done, total)
        except Exception as error:
            log.debug("progress bar cannot write: %s", error)

    def close(self) -> None:
        """End the line: the final amount when it was unknown, else a newline."""
        try:
            self._close()
        except Exception as error:
            log.debug("progress bar cannot write: %s", error)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _update(self, done: int, total: int | None) -> None:
        """Keep the figures and draw in the stream's style."""
        if self._finished:
            return

        self._done, self._total = max(0, int(done)), total
        if self._tty:
            self._draw_tty()
        elif total is not None:
            self._draw_plain(total)

    def _percent(self) -> int | None:
        """Return the percentage done, or None when the total is unknown."""
        if self._total is None:
            return None
        if self._total <= 0:
            return 100
        return min(100, self._done * 100 // self._total)

    def _draw_tty(self) -> None:
        """Redraw the one-line bar when the percentage moved or time passed."""
        percent = self._percent()
        now = time.monotonic()
        if percent == self._last_percent and now - self._last_draw < REDRAW_SECONDS:
            return

        self._last_percent, self._last_draw = percent, now
        if percent is None:
            line = f"{self.label} {format_bytes(self._done)}"
        else:
            filled = self.width * percent // 100
            bar = "#" * filled + "-" * (self.width - filled)
            line = (
                f"{self.label} [{bar}] {percent:3d}% "
                f"{format_bytes(self._done)} of {format_bytes(self._total or 0)}"
            )
        self._write("\r" + line.ljust(self._line_length))
        self._line_length = len(line)

        if percent == 100:
            self._write("\n")
            self._finished = True

    def _draw_plain(self, total: int) -> None:
        """Write a plain line each time another quarter is done."""
        percent = self._percent() or 0
        if percent < self._next_step:
            return

        self._write(
            f"{self.label}: {percent}% "
            f"({format_bytes(self._done)} of {format_bytes(total)})\n"
        )
        self._next_step = (percent // STEP_PERCENT + 1) * STEP_PERCENT
        self._finished = percent >= 100

    def _close(self) -> None:
        """Finish the line that was left open, if any."""
        if self._finished:
            return

        self._finished = True
        if self._tty and self._line_length:
            self._write("\n")
        elif not self._tty and self._total is None and self._done:
            self._write(f"{self.label}: {format_bytes(self._done)}\n")

    def _write(self, text: str) -> None:
        """Write and flush at once so the bar moves."""
        self.stream.write(text)
        self.stream.flush()


def _is_tty(stream: TextIO) -> bool:
    """Whether a stream is a terminal; False when that cannot be told."""
    try:
        return bool(stream.isatty())
    except Exception:
        return False
