"""The maths from raw model outputs to ranked classes, as plain numpy functions."""

from __future__ import annotations

import numpy as np

#: How far from 1 the sum of outputs may be for them to count as probabilities.
PROBABILITY_TOLERANCE = 0.05


def dequantize(raw: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Turn quantized outputs into real values.

    Args:
        raw: uint8 or int8 outputs (float outputs are returned as float32).
        scale: The tensor's quantization scale; 0 means not quantized.
        zero_point: The tensor's quantization zero point.

    Returns:
        A float32 array of the same shape.
    """
    if raw.dtype.kind == "f" or scale == 0:
        return raw.astype(np.float32, copy=False)
    return (raw.astype(np.float32) - zero_point) * np.float32(scale)


def are_probabilities(values: np.ndarray) -> bool:
    """Whether values are already a probability distribution."""
    if values.size == 0 or values.min() < 0 or values.max() > 1:
        return False
    return abs(float(values.sum()) - 1.0) <= PROBABILITY_TOLERANCE


def softmax(values: np.ndarray) -> np.ndarray:
    """The numerically stable softmax of a 1-D array."""
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def quantized_range_is_probability(
    scale: float, zero_point: int, dtype: np.dtype
) -> bool:
    """Whether a quantized output can only hold values from 0 to 1.

    Such an output is a softmax already (MobileNet's uint8 output has scale
    1/256 and zero point 0). Its values need not sum to exactly 1: each of
    the thousand classes is rounded, so the sum drifts by a few hundredths.
    """
    if np.dtype(dtype).kind == "f" or scale == 0:
        return False
    info = np.iinfo(dtype)
    low = (info.min - zero_point) * scale
    high = (info.max - zero_point) * scale
    return low >= -1e-6 and high <= 1 + 1e-6


def to_probabilities(values: np.ndarray, known: bool = False) -> np.ndarray:
    """Return values as probabilities, applying softmax only when needed.

    Args:
        values: Real-valued scores, one per class.
        known: True when the output is known to hold probabilities already.
    """
    values = values.astype(np.float32, copy=False).reshape(-1)
    if known or are_probabilities(values):
        return values
    return softmax(values)


def rank(
    probabilities: np.ndarray, top_k: int, threshold: float = 0.0
) -> list[tuple[int, float]]:
    """Pick the best classes.

    Args:
        probabilities: One score per class.
        top_k: How many classes to return at most.
        threshold: The lowest score to return.

    Returns:
        (class index, score) pairs, best first, ties broken by lower index.
    """
    count = min(top_k, probabilities.size)
    if count <= 0:
        return []
    candidates = np.argpartition(-probabilities, count - 1)[:count]
    order = sorted(candidates, key=lambda index: (-probabilities[index], index))
    return [
        (int(index), float(probabilities[index]))
        for index in order
        if probabilities[index] >= threshold
    ]
