"""A slideshow of photos from a folder or a glob, looped."""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import cv2
import numpy as np

from pi_classifier.config import CameraConfig
from pi_classifier.errors import ConfigError, SourceError
from pi_classifier.sources.common import PacedSource, natural_key

log = logging.getLogger(__name__)

#: File name endings taken from a folder; a glob takes whatever it matches.
IMAGE_SUFFIXES = frozenset(
    {
        ".avif", ".bmp", ".dib", ".gif", ".jp2", ".jpe", ".jpeg", ".jpg", ".pbm",
        ".pgm", ".png", ".pnm", ".ppm", ".tif", ".tiff", ".webp",
    }
)  # fmt: skip


def list_images(spec: str) -> list[Path]:
    """List the files a folder or a glob names, in natural order.

    Args:
        spec: A folder (its files with an image ending are taken), a glob
            such as ``~/photos/*.jpg``, or a single file.

    Returns:
        The files, ``img2`` before ``img10``; empty when nothing matches.

    """
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [
            entry
            for entry in path.iterdir()
            if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES
        ]
    else:
        files = [Path(name) for name in glob.glob(str(path)) if Path(name).is_file()]
    return sorted(files, key=lambda file: natural_key(str(file)))


def fit_within(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Shrink a picture to fit width x height, keeping its aspect.

    Args:
        image: A BGR picture.
        width: The widest the result may be.
        height: The tallest the result may be.

    Returns:
        The picture itself when it already fits, else a smaller copy.

    """
    image_height, image_width = image.shape[:2]
    scale = min(width / image_width, height / image_height)
    if scale >= 1.0:
        return image

    size = (max(1, round(image_width * scale)), max(1, round(image_height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class ImagesSource(PacedSource):
    """Photos shown one after another, each for ``camera.slide_seconds``.

    Frames go out at ``camera.fps``; the frames of one slide are copies of
    one decoded picture, so a photo is decoded once per slide, not per frame.
    A photo keeps its own size unless it is larger than ``camera.width`` x
    ``camera.height``, when it is shrunk to fit. A file that cannot be decoded
    is logged once and skipped from then on. Decoding happens inside the
    ``read()`` that starts a slide, so a very large photo makes that one read
    slower.
    """

    name = "images"

    def __init__(self, camera: CameraConfig) -> None:
        if not camera.device:
            raise ConfigError(
                "camera.device must name a folder or a glob of images when "
                "camera.source is images"
            )
        self.spec = camera.device
        super().__init__(f"images {self.spec}")
        self._width = camera.width
        self._height = camera.height
        self._rate = camera.fps
        self._frames_per_slide = max(1, round(camera.slide_seconds * camera.fps))
        self._files: list[Path] = []
        self._skipped: set[Path] = set()
        self._index = -1
        self._current: np.ndarray | None = None
        self._shown = 0

    @property
    def files(self) -> list[Path]:
        """The files listed for the slideshow, in order, undecodable ones too."""
        return list(self._files)

    def _start(self) -> float:
        """List the files and decode the first one that decodes."""
        self._files = list_images(self.spec)
        if not self._files:
            raise SourceError(f"no images found in {self.spec}")

        self._skipped = set()
        self._index = -1
        self._current = None
        self._advance()
        log.info(
            "slideshow of %d files from %s, %d frames per slide",
            len(self._files),
            self.spec,
            self._frames_per_slide,
        )
        return self._rate

    def _next_image(self) -> np.ndarray:
        """Return a copy of the current slide, moving on when its time is up."""
        if self._shown >= self._frames_per_slide:
            self._advance()

        self._shown += 1
        assert self._current is not None
        return self._current.copy()

    def _advance(self) -> None:
        """Make the next decodable file the current slide, looping at the end."""
        count = len(self._files)
        for step in range(1, count + 1):
            index = (self._index + step) % count
            if index == self._index and self._current is not None:
                break  # the only good photo left is the one on show
            image = self._decode(self._files[index])
            if image is not None:
                self._index, self._current = index, image
                break
        else:
            raise SourceError(f"none of the images in {self.spec} can be decoded")

        self._shown = 0

    def _decode(self, path: Path) -> np.ndarray | None:
        """Decode and fit one photo, or return None (logging once) if it fails."""
        if path in self._skipped:
            return None

        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            self._skipped.add(path)
            log.warning("skipping %s: it cannot be decoded as an image", path)
            return None

        log.debug("showing %s (%dx%d)", path, image.shape[1], image.shape[0])
        return fit_within(image, self._width, self._height)

    def _finish(self) -> None:
        """Drop the decoded slide."""
        self._current = None
