"""Helpers shared by the tests: the runtime under test and text in pixels."""

from __future__ import annotations

import os

import cv2
import numpy as np

from pi_classifier.overlay import FONT

#: The runtime the suite runs under (.ci/run runs it under each in turn).
RUNTIME = os.environ.get("PI_CLASSIFIER_TEST_RUNTIME", "auto")


def text_score(image: np.ndarray, text: str, scale: float, thickness: int) -> float:
    """How well ``text``, drawn as the overlay draws it, matches bright pixels.

    Both the picture and a freshly drawn template are reduced to "white text"
    masks, so the translucent panel and the photo behind it do not matter.

    Returns:
        The best normalised correlation, 1.0 for a perfect match.
    """
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    pad = thickness + 2
    template = np.zeros((height + baseline + 2 * pad, width + 2 * pad), np.uint8)
    cv2.putText(template, text, (pad, pad + height), FONT, scale, 255, thickness,
                cv2.LINE_AA)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    mask = np.where(grey > 200, 255, 0).astype(np.uint8)
    template = np.where(template > 127, 255, 0).astype(np.uint8)
    if mask.shape[0] < template.shape[0] or mask.shape[1] < template.shape[1]:
        return 0.0
    return float(cv2.matchTemplate(mask, template, cv2.TM_CCOEFF_NORMED).max())
