"""Logging set-up: plain lines on a terminal, priority-tagged lines for journald."""

from __future__ import annotations

import logging
import os
import sys

#: sd-daemon priority prefixes that journald reads from a service's stderr.
_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def under_journal() -> bool:
    """Whether stderr goes to the systemd journal."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def debug_enabled() -> bool:
    """Whether PI_CLASSIFIER_DEBUG asks for tracebacks and debug logs."""
    return os.environ.get("PI_CLASSIFIER_DEBUG", "") not in ("", "0")


class JournalFormatter(logging.Formatter):
    """``<N>component: message``, with no timestamp: journald adds its own."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record with its journald priority prefix."""
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        text = f"<{priority}>{_component(record.name)}: {record.getMessage()}"
        if record.exc_info and debug_enabled():
            text += "\n" + self.formatException(record.exc_info)
        return text


class TerminalFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL component: message`` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        """Format one record with time, level and component."""
        text = (f"{self.formatTime(record, self.datefmt)} {record.levelname:<7} "
                f"{_component(record.name)}: {record.getMessage()}")
        if record.exc_info and debug_enabled():
            text += "\n" + self.formatException(record.exc_info)
        return text


def _component(name: str) -> str:
    """The part of a logger name that says which component spoke."""
    return name.removeprefix("pi_classifier.") if name != "pi_classifier" else "main"


def setup_logging(verbosity: int = 0) -> None:
    """Send log records to stderr in the form that suits where it goes.

    Args:
        verbosity: -1 for warnings only, 0 for info, 1 or more for debug.
    """
    level = logging.INFO
    if verbosity < 0:
        level = logging.WARNING
    if verbosity > 0 or debug_enabled():
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if under_journal() else TerminalFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("pi_classifier").setLevel(level)
