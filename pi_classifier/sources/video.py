"""A video file played in a loop at its own frame rate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pi_classifier.config import CameraConfig
from pi_classifier.errors import ConfigError, SourceError
from pi_classifier.sources.common import PacedSource

log = logging.getLogger(__name__)

#: Frame rates a file may claim; anything else is a broken header.
_SANE_FPS = (0.1, 240.0)


class VideoSource(PacedSource):
    """Frames decoded from a video file through OpenCV, looped at the end.

    The file is paced at the rate in its header, or at ``camera.fps`` when
    the header has none. A consumer slower than that rate plays the video
    slower rather than skipping frames. Decoding a frame happens inside
    ``read()`` and is not interruptible; only the pacing wait is bounded by
    the timeout.
    """

    name = "video"

    def __init__(self, camera: CameraConfig) -> None:
        if not camera.device:
            raise ConfigError(
                "camera.device must name a video file when camera.source is video"
            )
        self.path = Path(camera.device).expanduser()
        super().__init__(f"video file {self.path}")
        self._fallback_fps = camera.fps
        self._capture: Any = None

    def _start(self) -> float:
        """Open the file and decode its first frame to prove it plays."""
        if not self.path.is_file():
            raise SourceError(f"video file {self.path} does not exist")

        self._capture = self._open_capture()
        first = self._decode()
        if first is None:
            self._release()
            raise SourceError(f"cannot decode video file {self.path}")

        self._pending = first
        return self._frame_rate(first)

    def _open_capture(self) -> Any:
        """Open the file with OpenCV, failing with the path when it cannot."""
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot decode video file {self.path}")
        return capture

    def _decode(self) -> np.ndarray | None:
        """Decode the next frame, or return None at the end of the file."""
        ok, image = self._capture.read()
        return image if ok and image is not None else None

    def _frame_rate(self, first: np.ndarray) -> float:
        """Take the rate from the file's header, or the configured one."""
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if not _SANE_FPS[0] <= fps <= _SANE_FPS[1]:
            log.info(
                "%s gives no usable frame rate (%s); playing it at %.3g fps",
                self.path,
                fps,
                self._fallback_fps,
            )
            fps = self._fallback_fps

        height, width = first.shape[:2]
        log.info(
            "%s: %dx%d, %d frames, %.3g fps", self.path, width, height, frames, fps
        )
        return fps

    def _next_image(self) -> np.ndarray:
        """Decode the next frame, starting over at the end of the file."""
        image = self._decode()
        if image is not None:
            return image

        log.debug("end of %s; starting over", self.path)
        self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        image = self._decode()
        if image is not None:
            return image

        # Some containers cannot seek; opening the file again always rewinds.
        self._release()
        self._capture = self._open_capture()
        image = self._decode()
        if image is None:
            raise SourceError(f"video file {self.path} stopped decoding")
        return image

    def _release(self) -> None:
        """Release the OpenCV capture if one is open."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def _finish(self) -> None:
        """Release the file."""
        self._release()
