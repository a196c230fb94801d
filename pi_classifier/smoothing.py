"""Steady labels for an audience: smoothing over time plus show/hide hysteresis."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class LabelSmoother:
    """Turns a stream of score vectors into a steady list of shown classes.

    Scores are averaged with an exponential moving average; a class appears
    once its average reaches ``threshold_high`` and stays until its average
    falls below ``threshold_low``. The class shown first keeps its place
    until another one beats it by the width of that band. On a still scene
    the shown classes and their order therefore do not flicker, even when
    single frames disagree.

    Args:
        alpha: Weight of the newest scores (1 = no smoothing).
        threshold_high: Average score at which a class appears.
        threshold_low: Average score below which a shown class disappears.
        top_k: How many classes to show at most.
    """

    def __init__(
        self, alpha: float, threshold_high: float, threshold_low: float, top_k: int
    ) -> None:
        self.configure(alpha, threshold_high, threshold_low, top_k)
        self._average: np.ndarray | None = None
        self._shown: set[int] = set()
        self._leader: int | None = None

    def configure(
        self, alpha: float, threshold_high: float, threshold_low: float, top_k: int
    ) -> None:
        """Change the settings; the running average is kept."""
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {alpha}")
        if threshold_low > threshold_high:
            raise ValueError("threshold_low must not be above threshold_high")
        self.alpha = alpha
        self.threshold_high = threshold_high
        self.threshold_low = threshold_low
        self.top_k = top_k

    def reset(self) -> None:
        """Forget the history, for example when the model changes."""
        self._average = None
        self._shown = set()
        self._leader = None

    def update(self, probabilities: np.ndarray) -> list[tuple[int, float]]:
        """Add one frame's scores and return the classes to show.

        Returns:
            (class index, averaged score) pairs, best first, at most top_k.
        """
        if self._average is None or self._average.shape != probabilities.shape:
            self._average = probabilities.astype(np.float32, copy=True)
        else:
            self._average *= 1 - self.alpha
            self._average += self.alpha * probabilities
        average = self._average
        staying = {i for i in self._shown if average[i] >= self.threshold_low}
        arriving = np.flatnonzero(average >= self.threshold_high)
        shown = staying.union(int(i) for i in arriving)
        margin = self.threshold_high - self.threshold_low

        def place(index: int) -> tuple[float, int]:
            bonus = margin if index == self._leader else 0.0
            return -(average[index] + bonus), index

        ranked = sorted(shown, key=place)[: self.top_k]
        self._shown = set(ranked)
        self._leader = ranked[0] if ranked else None
        return [(i, float(average[i])) for i in ranked]
