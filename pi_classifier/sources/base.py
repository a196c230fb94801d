"""The interface every frame source follows."""

from __future__ import annotations

import abc
import logging
from types import TracebackType

from pi_classifier.frames import Frame

log = logging.getLogger(__name__)


class FrameSource(abc.ABC):
    """A camera, a video file, a folder of photos or a generator of frames.

    Sources are context managers; ``close()`` is safe to call twice.
    """

    name = "source"

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the device or files.

        Raises:
            SourceError: The source cannot be opened; the message says why.
        """

    @abc.abstractmethod
    def read(self, timeout: float) -> Frame:
        """Wait for the next frame, paced at the source's own rate.

        Args:
            timeout: The longest time to wait, in seconds.

        Raises:
            SourceError: No frame arrived within ``timeout`` or the device failed.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device; safe to call more than once."""

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
