"""The overlay: labels with confidence bars and live figures, drawn with OpenCV."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from pi_classifier.config import OverlayConfig

log = logging.getLogger(__name__)

FONT = cv2.FONT_HERSHEY_DUPLEX
NOTHING = "Nothing recognised"
#: Label text height as a share of the picture height, at font_scale 1.
TEXT_SHARE = 1 / 16


def shown_rate(per_second: float) -> float:
    """A rate as the overlay shows it: tenths below 10 a second, else whole.

    A Pi Zero classifying every two seconds shows "0.5/s", not "0/s".
    """
    if per_second < 10:
        return round(per_second, 1)
    return float(round(per_second))


@dataclass(frozen=True)
class OverlayContent:
    """What the overlay shows.

    Attributes:
        labels: (shown name, score) pairs, best first; empty for "nothing".
        display_fps: Frames shown per second.
        inference_fps: Classifications per second.
        inference_ms: Time of the last classification.
        latency_ms: Capture-to-shown-label latency.
        temperature_c: SoC temperature, or None when unknown.
    """

    labels: tuple[tuple[str, float], ...] = ()
    display_fps: float = 0.0
    inference_fps: float = 0.0
    inference_ms: float = 0.0
    latency_ms: float = 0.0
    temperature_c: float | None = None

    def rounded(self) -> OverlayContent:
        """The content as shown (rounded figures), for change detection."""
        return OverlayContent(
            tuple((name, round(score, 2)) for name, score in self.labels),
            shown_rate(self.display_fps), shown_rate(self.inference_fps),
            round(self.inference_ms), round(self.latency_ms),
            None if self.temperature_c is None else round(self.temperature_c),
        )


@dataclass(frozen=True)
class _Layout:
    """Sizes derived from the picture height and font scale."""

    scale: float
    thickness: int
    line: int
    pad: int
    bar: int
    small_scale: float
    small_line: int


def _bgr(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Config colours are RGB; OpenCV draws BGR."""
    return rgb[2], rgb[1], rgb[0]


class Overlay:
    """Draws the label panel over frames, or onto a transparent RGBA layer.

    Args:
        config: Position, colours, font scale and which fields show.
        top_k: How many label rows to make room for.
    """

    def __init__(self, config: OverlayConfig, top_k: int = 3) -> None:
        self.config = config
        self.top_k = top_k
        self._tint_block: np.ndarray | None = None

    def _layout(self, height: int) -> _Layout:
        """Work out text and panel sizes for a picture height."""
        text_height = max(8.0, height * TEXT_SHARE * self.config.font_scale)
        scale = text_height / 22.0
        small_scale = scale * 0.6
        return _Layout(
            scale=scale,
            thickness=max(1, round(scale * 1.6)),
            line=round(text_height * 1.9),
            pad=round(text_height * 0.5),
            bar=max(3, round(text_height * 0.28)),
            small_scale=small_scale,
            small_line=round(22 * small_scale * 1.7),
        )

    def _tint(self, shape: tuple[int, ...]) -> np.ndarray:
        """A block of the panel colour, kept while the panel size stays."""
        if self._tint_block is None or self._tint_block.shape != shape:
            self._tint_block = np.empty(shape, np.uint8)
            self._tint_block[:] = _bgr(self.config.panel_color)
        return self._tint_block

    def label_font(self, height: int) -> tuple[float, int]:
        """The (scale, thickness) label names are drawn with at this height."""
        layout = self._layout(height)
        return layout.scale, layout.thickness

    def figures(self, content: OverlayContent) -> str:
        """The line of live figures the config asks for, as drawn.

        Args:
            content: What the overlay shows.

        Returns:
            For example "30 fps  infer 0.5/s 1970 ms  lag 45 ms  48 C".
        """
        show = self.config.show
        parts = []
        if "fps" in show:
            parts.append(f"{shown_rate(content.display_fps):g} fps")
        if "inference" in show:
            parts.append(f"infer {shown_rate(content.inference_fps):g}/s "
                         f"{content.inference_ms:.0f} ms")
        if "latency" in show:
            parts.append(f"lag {content.latency_ms:.0f} ms")
        if "temperature" in show and content.temperature_c is not None:
            parts.append(f"{content.temperature_c:.0f} C")
        return "  ".join(parts)

    def _needed_width(self, layout: _Layout, content: OverlayContent) -> int:
        """The panel width the longest label row needs."""
        widest = 0
        for name, _ in content.labels[: self.top_k]:
            widest = max(widest, cv2.getTextSize(f"{name}  100%", FONT, layout.scale,
                                                 layout.thickness)[0][0])
        return widest + 2 * layout.pad

    def _panel_box(
        self, width: int, height: int, layout: _Layout, content: OverlayContent,
        figures: str,
    ) -> tuple[int, int, int, int]:
        """The panel rectangle (x0, y0, x1, y1) in its configured corner.

        The panel has a steady width for usual names and grows only for a
        long one, up to 90% of the picture width (beyond that names are
        shortened with an ellipsis).
        """
        rows = self.top_k if "labels" in self.config.show else 0
        panel_height = layout.pad * 2 + rows * layout.line
        panel_height += layout.small_line if figures else 0
        steady = max(round(width * 0.42), round(height * 0.62))
        panel_width = min(round(width * 0.9),
                          max(steady, self._needed_width(layout, content)))
        margin = round(height * 0.025)
        x0 = margin if "left" in self.config.position else width - margin - panel_width
        y0 = margin if "top" in self.config.position else height - margin - panel_height
        x0, y0 = max(0, x0), max(0, y0)
        return x0, y0, min(width, x0 + panel_width), min(height, y0 + panel_height)

    def draw(self, image: np.ndarray, content: OverlayContent) -> None:
        """Draw the panel onto a BGR picture, in place."""
        height, width = image.shape[:2]
        layout = self._layout(height)
        figures = self.figures(content)
        box = self._panel_box(width, height, layout, content, figures)
        x0, y0, x1, y1 = box
        region = image[y0:y1, x0:x1]
        tint = self._tint(region.shape)
        cv2.addWeighted(tint, self.config.panel_opacity, region,
                        1 - self.config.panel_opacity, 0, dst=region)
        colours = (_bgr(self.config.text_color), _bgr(self.config.bar_color))
        self._draw_text(image, box, layout, content, figures, colours)

    def render_rgba(self, width: int, height: int, content: OverlayContent
                    ) -> np.ndarray:
        """Draw the panel onto a transparent RGBA layer of the given size."""
        layer = np.zeros((height, width, 4), np.uint8)
        layout = self._layout(height)
        figures = self.figures(content)
        box = self._panel_box(width, height, layout, content, figures)
        x0, y0, x1, y1 = box
        alpha = round(255 * self.config.panel_opacity)
        layer[y0:y1, x0:x1] = (*self.config.panel_color, alpha)
        colours = ((*self.config.text_color, 255), (*self.config.bar_color, 255))
        self._draw_text(layer, box, layout, content, figures, colours)
        return layer

    def _draw_text(
        self,
        image: np.ndarray,
        box: tuple[int, int, int, int],
        layout: _Layout,
        content: OverlayContent,
        figures: str,
        colours: tuple[tuple[int, ...], tuple[int, ...]],
    ) -> None:
        """Draw label rows, bars and the figures line inside the panel."""
        text_colour, bar_colour = colours
        x0, y0, x1, _ = box
        left, right = x0 + layout.pad, x1 - layout.pad
        y = y0 + layout.pad
        if "labels" in self.config.show:
            rows = content.labels[: self.top_k]
            if not rows:
                self._text(image, NOTHING, (left, y + round(layout.line * 0.6)),
                           layout.scale * 0.8, text_colour, layout.thickness)
            for name, score in rows:
                self._label_row(image, (left, right, y), name, score, layout,
                                (text_colour, bar_colour))
                y += layout.line
            y = y0 + layout.pad + self.top_k * layout.line
        if figures:
            self._text(image, figures, (left, y + round(layout.small_line * 0.7)),
                       layout.small_scale, text_colour, max(1, layout.thickness - 1))

    def _label_row(
        self,
        image: np.ndarray,
        span: tuple[int, int, int],
        name: str,
        score: float,
        layout: _Layout,
        colours: tuple[tuple[int, ...], tuple[int, ...]],
    ) -> None:
        """One label: name and percentage, with a bar for the score below."""
        left, right, top = span
        text_colour, bar_colour = colours
        baseline = top + round(layout.line * 0.55)
        percent = f"{score * 100:.0f}%"
        (percent_width, _), _ = cv2.getTextSize(percent, FONT, layout.scale,
                                                layout.thickness)
        self._text(image, _fit(name, right - left - percent_width - layout.pad,
                               layout), (left, baseline), layout.scale, text_colour,
                   layout.thickness)
        self._text(image, percent, (right - percent_width, baseline), layout.scale,
                   text_colour, layout.thickness)
        bar_top = baseline + round(layout.line * 0.15)
        bar_right = left + round((right - left) * max(0.0, min(1.0, score)))
        cv2.rectangle(image, (left, bar_top), (right, bar_top + layout.bar),
                      _dim(text_colour), -1)
        if bar_right > left:
            cv2.rectangle(image, (left, bar_top), (bar_right, bar_top + layout.bar),
                          bar_colour, -1)

    @staticmethod
    def _text(
        image: np.ndarray,
        text: str,
        origin: tuple[int, int],
        scale: float,
        colour: tuple[int, ...],
        thickness: int,
    ) -> None:
        """Anti-aliased text."""
        cv2.putText(image, text, origin, FONT, scale, colour, thickness, cv2.LINE_AA)


def _dim(colour: tuple[int, ...]) -> tuple[int, ...]:
    """A darker shade of a colour for the empty part of a bar."""
    return (*(round(c * 0.3) for c in colour[:3]), *colour[3:])


def _fit(text: str, width: int, layout: _Layout) -> str:
    """Shorten text with an ellipsis so it fits the width in pixels."""
    if cv2.getTextSize(text, FONT, layout.scale, layout.thickness)[0][0] <= width:
        return text
    while len(text) > 1:
        text = text[:-1]
        candidate = text.rstrip() + "..."
        if cv2.getTextSize(candidate, FONT, layout.scale,
                           layout.thickness)[0][0] <= width:
            return candidate
    return text
