"""Turning a camera picture into a model's input tensor, with OpenCV."""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: Models of this kind expect pixels scaled to [-1, 1]: (x - 127.5) / 127.5.
PIXEL_MEAN = 127.5
PIXEL_STD = 127.5


def center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Crop the centre of an image to the aspect ratio width:height.

    Returns a view of the image, not a copy.
    """
    rows, columns = image.shape[:2]
    if columns * height > rows * width:
        keep = max(1, round(rows * width / height))
        start = (columns - keep) // 2
        return image[:, start : start + keep]
    keep = max(1, round(columns * height / width))
    start = (rows - keep) // 2
    return image[start : start + keep]


def quantization_table(scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """A 256-entry table from pixel values to the model's quantized values.

    The table holds the bytes of the quantized values (int8 values are stored
    by their two's-complement byte), so it can be applied with ``cv2.LUT``.
    """
    info = np.iinfo(dtype)
    pixels = np.arange(256, dtype=np.float64)
    real = (pixels - PIXEL_MEAN) / PIXEL_STD
    quantized = np.clip(np.round(real / scale + zero_point), info.min, info.max)
    return quantized.astype(dtype).view(np.uint8)


class InputWriter:
    """Writes pictures into a model's input tensor as cheaply as it can.

    For uint8 models whose quantization already maps pixel values onto the
    expected [-1, 1] range (the usual case), pixels go in unchanged; other
    quantized models use a 256-entry look-up table; float models are scaled.

    Args:
        width: The model's input width.
        height: The model's input height.
        dtype: The input tensor's numpy type.
        quantization: The input tensor's (scale, zero point).
        crop: ``center`` to crop to the model's aspect first, ``none`` to
            stretch the whole picture.
    """

    def __init__(
        self,
        width: int,
        height: int,
        dtype: np.dtype,
        quantization: tuple[float, int],
        crop: str = "center",
    ) -> None:
        self.width = width
        self.height = height
        self.dtype = np.dtype(dtype)
        self.crop = crop
        self._resized = np.empty((height, width, 3), np.uint8)
        self._table = self._make_table(quantization)

    def _make_table(self, quantization: tuple[float, int]) -> np.ndarray | None:
        """Choose the pixel mapping: None for unchanged or float input."""
        scale, zero_point = quantization
        if self.dtype.kind == "f" or scale == 0:
            return None
        table = quantization_table(scale, zero_point, self.dtype)
        if self.dtype == np.uint8 and np.array_equal(table, np.arange(256)):
            return None
        return table

    def write(self, image: np.ndarray, tensor: np.ndarray, order: str = "bgr") -> None:
        """Crop, resize, reorder channels and quantize into ``tensor``.

        Args:
            image: An 8-bit, 3-channel picture of any size.
            tensor: The input tensor's view, shape (1, height, width, 3).
            order: ``bgr`` (OpenCV pictures) or ``rgb``.
        """
        if self.crop == "center":
            image = center_crop(image, self.width, self.height)
        rgb = self._resize_to_rgb(image, order)
        target = tensor[0]
        if self.dtype.kind == "f":
            np.multiply(rgb, np.float32(1 / PIXEL_STD), out=target, casting="unsafe")
            target -= np.float32(PIXEL_MEAN / PIXEL_STD)
        elif self._table is None:
            target[...] = rgb
        else:
            cv2.LUT(rgb, self._table, dst=target.view(np.uint8))

    def _resize_to_rgb(self, image: np.ndarray, order: str) -> np.ndarray:
        """Resize to the model size and return an RGB picture."""
        if image.shape[1] != self.width or image.shape[0] != self.height:
            image = self._resize(image)
        if order == "bgr":
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return image

    def _resize(self, image: np.ndarray) -> np.ndarray:
        """Shrink or enlarge to the model size, smoothly but cheaply.

        Big reductions first average whole blocks of k x k pixels (OpenCV's
        fast path for a whole-number factor, which also prevents aliasing),
        then finish with a bilinear resize; a general area resize costs
        about ten times more for the same picture.
        """
        factor = min(image.shape[1] // self.width, image.shape[0] // self.height)
        if factor >= 2:
            rows = image.shape[0] - image.shape[0] % factor
            columns = image.shape[1] - image.shape[1] % factor
            image = cv2.resize(image[:rows, :columns], (columns // factor,
                               rows // factor), interpolation=cv2.INTER_AREA)
        return cv2.resize(image, (self.width, self.height), dst=self._resized,
                          interpolation=cv2.INTER_LINEAR)
