"""Reading a screendump: where the label panel is, and whether the camera shows.

vivid's picture (with its text switched off) is a colour-bar pattern: every
column of it has one colour from top to bottom. So each column's median
colour is what the camera alone puts there, and any pixel far from its
column's median is something drawn on top: the overlay panel, its text, or
a stray console cursor. The test needs no knowledge of the overlay's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: A channel differing by more than this from its column's colour is drawn over.
DRAWN_OVER = 40
#: Pure colours of the 75% colour bars that a camera picture must show.
BAR_COLOURS_RGB = {
    "yellow": (191, 191, 0), "cyan": (0, 191, 191), "green": (0, 191, 0),
    "magenta": (191, 0, 191), "red": (191, 0, 0), "blue": (0, 0, 191),
}
BAR_TOLERANCE = 40
#: A pixel at least this bright in every channel is text (the default white).
TEXT_LEVEL = 225


@dataclass(frozen=True)
class ScreenReport:
    """What a screendump shows.

    Attributes:
        size: (width, height) of the screen.
        bars_seen: The colour-bar colours found in the picture's columns.
        panel: (left, top, right, bottom) around everything drawn over the
            picture, or None when nothing is.
        panel_share: The panel's area as a share of the screen.
        darkened_share: Within the panel, the share of pixels over a bright
            camera colour that the panel made darker.
        text_pixels: Pixels within the panel at text brightness over a
            camera colour that is not that bright.
        stray_pixels: Drawn-over pixels outside the panel's rectangle.
    """

    size: tuple[int, int]
    bars_seen: tuple[str, ...]
    panel: tuple[int, int, int, int] | None
    panel_share: float
    darkened_share: float
    text_pixels: int
    stray_pixels: int

    def problems(self) -> list[str]:
        """Why this is not "labels drawn over the live picture", or []."""
        found = []
        if len(self.bars_seen) < 4:
            found.append(f"the camera's colour bars are not there (saw "
                         f"{list(self.bars_seen)})")
        if self.panel is None:
            found.append("nothing is drawn over the picture")
            return found
        if self.panel_share > 0.5:
            found.append(f"the panel covers {self.panel_share:.0%} of the screen")
        if self.darkened_share < 0.5:
            found.append(f"the panel darkens only {self.darkened_share:.0%} of "
                         "the picture under it")
        if self.text_pixels < 100:
            found.append(f"only {self.text_pixels} text pixels in the panel")
        if self.stray_pixels > 200:
            found.append(f"{self.stray_pixels} pixels drawn outside the panel")
        return found


def load_rgb(path: Path) -> np.ndarray:
    """Read a PNG screendump as an RGB array."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path} is not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def column_colours(rgb: np.ndarray) -> np.ndarray:
    """Each pixel's column's median colour: the picture without the overlay."""
    median = np.median(rgb, axis=0).astype(np.int16)
    return np.broadcast_to(median, rgb.shape)


def drawn_mask(rgb: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Pixels far from their column's colour."""
    difference = np.abs(rgb.astype(np.int16) - reference).max(axis=2)
    return difference > DRAWN_OVER


def bars_seen(reference: np.ndarray) -> tuple[str, ...]:
    """The colour-bar colours covering at least 2% of the columns."""
    columns = reference[0]
    seen = []
    for name, colour in BAR_COLOURS_RGB.items():
        close = np.abs(columns - np.array(colour)).max(axis=1) <= BAR_TOLERANCE
        if close.mean() >= 0.02:
            seen.append(name)
    return tuple(seen)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) around all marked pixels, or None if none."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def panel_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the overlay panel, or None.

    Marked pixels a few apart are joined into areas first. The panel is the
    largest area together with any area wholly within its rows (its text
    where it runs past the dark rectangle); text elsewhere, such as console
    lines above or below it, is left outside the box.
    """
    joined = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    top = stats[largest, cv2.CC_STAT_TOP]
    bottom = top + stats[largest, cv2.CC_STAT_HEIGHT]
    inside_rows = (stats[:, cv2.CC_STAT_TOP] >= top) & (
        stats[:, cv2.CC_STAT_TOP] + stats[:, cv2.CC_STAT_HEIGHT] <= bottom)
    left = stats[1:, cv2.CC_STAT_LEFT][inside_rows[1:]].min()
    right = (stats[1:, cv2.CC_STAT_LEFT] + stats[1:, cv2.CC_STAT_WIDTH])[
        inside_rows[1:]].max()
    box = bounding_box(mask[top:bottom, left:right])
    if box is None:
        return None
    return (int(left) + box[0], int(top) + box[1], int(left) + box[2],
            int(top) + box[3])


def analyse(path: Path) -> ScreenReport:
    """Find the overlay panel and the camera picture in a screendump."""
    rgb = load_rgb(path)
    reference = column_colours(rgb)
    mask = drawn_mask(rgb, reference)
    box = panel_box(mask)
    height, width = mask.shape
    if box is None:
        return ScreenReport((width, height), bars_seen(reference), None, 0.0,
                            0.0, 0, 0)
    left, top, right, bottom = box
    inside = np.zeros_like(mask)
    inside[top:bottom, left:right] = True
    return ScreenReport(
        size=(width, height),
        bars_seen=bars_seen(reference),
        panel=box,
        panel_share=(right - left) * (bottom - top) / (width * height),
        darkened_share=_darkened_share(rgb, reference, inside),
        text_pixels=_text_pixels(rgb, reference, inside),
        stray_pixels=int((mask & ~inside).sum()),
    )


def _darkened_share(rgb: np.ndarray, reference: np.ndarray,
                    inside: np.ndarray) -> float:
    """Share of panel pixels over a bright colour that are clearly darker."""
    shown = rgb.astype(np.int16).sum(axis=2)
    camera = reference.sum(axis=2)
    bright = inside & (camera >= 150)
    if not bright.any():
        return 0.0
    darker = bright & (shown <= camera * 0.8)
    return float(darker.sum() / bright.sum())


def _text_pixels(rgb: np.ndarray, reference: np.ndarray, inside: np.ndarray) -> int:
    """Panel pixels at text brightness where the camera is not that bright."""
    text = (rgb >= TEXT_LEVEL).all(axis=2)
    camera_bright = (reference >= TEXT_LEVEL).all(axis=2)
    return int((inside & text & ~camera_bright).sum())


def changed_region(before: Path, after: Path) -> tuple[int, tuple[int, int, int, int]
                                                      | None]:
    """How many pixels differ between two screendumps, and their box."""
    difference = np.abs(load_rgb(before).astype(np.int16)
                        - load_rgb(after).astype(np.int16)).max(axis=2)
    changed = difference > DRAWN_OVER
    return int(changed.sum()), bounding_box(changed)
