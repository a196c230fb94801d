"""Small measuring helpers: event rates and the SoC temperature."""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


class RateMeter:
    """Counts events per second over a sliding window.

    The last two events are always kept, so a rate slower than one event per
    window (a model taking seconds under emulation) still reads correctly,
    and the rate falls towards zero while no events come.

    Args:
        window: The window in seconds.
    """

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._times: collections.deque[float] = collections.deque()

    def tick(self, now: float | None = None) -> None:
        """Record one event."""
        now = time.monotonic() if now is None else now
        self._times.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        """Forget events older than the window."""
        while len(self._times) > 2 and now - self._times[0] > self.window:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        """Events per second over the window."""
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(self._times[-1] - self._times[0], now - self._times[-1])
        return (len(self._times) - 1) / span if span > 0 else 0.0


class TemperatureReader:
    """Reads the SoC temperature, at most once per interval.

    Args:
        path: The thermal zone file (millidegrees Celsius).
        interval: Seconds between reads; in between the last value is kept.
    """

    def __init__(self, path: Path = THERMAL_ZONE, interval: float = 2.0) -> None:
        self.path = path
        self.interval = interval
        self._value: float | None = None
        self._read_at = -interval
        self._available = True

    def read(self) -> float | None:
        """The temperature in Celsius, or None where it cannot be read."""
        now = time.monotonic()
        if self._available and now - self._read_at >= self.interval:
            self._read_at = now
            try:
                self._value = int(self.path.read_text().strip()) / 1000
            except (OSError, ValueError):
                log.debug("no SoC temperature at %s", self.path)
                self._available = False
                self._value = None
        return self._value
