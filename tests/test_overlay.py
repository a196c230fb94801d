import dataclasses

import numpy as np
import pytest
from helpers import text_score

from pi_classifier.config import OverlayConfig
from pi_classifier.overlay import NOTHING, Overlay, OverlayContent

CONTENT = OverlayContent((("banana", 0.97), ("slug", 0.02)), 29.6, 20.0, 4.2, 35.0,
                         48.5)


def grey(height=480, width=640, level=128):
    return np.full((height, width, 3), level, np.uint8)


def test_panel_is_translucent_and_in_its_corner():
    image = grey()
    Overlay(OverlayConfig()).draw(image, CONTENT)
    expected = round(128 * 0.4)
    assert abs(int(image[15, 15, 0]) - expected) <= 1
    assert (image[-5:, -5:] == 128).all()


def test_names_are_drawn_readably():
    image = grey()
    overlay = Overlay(OverlayConfig())
    overlay.draw(image, CONTENT)
    scale, thickness = overlay.label_font(480)
    assert text_score(image, "banana", scale, thickness) > 0.9
    assert text_score(image, "orange", scale, thickness) < 0.7


def test_text_scales_with_the_screen_height():
    small, large = Overlay(OverlayConfig()), Overlay(OverlayConfig(font_scale=2.0))
    assert large.label_font(480)[0] == pytest.approx(2 * small.label_font(480)[0])
    assert small.label_font(1080)[0] > 2 * small.label_font(480)[0]


def test_nothing_recognised_state():
    image = grey()
    overlay = Overlay(OverlayConfig())
    overlay.draw(image, OverlayContent(()))
    scale, thickness = overlay.label_font(480)
    assert text_score(image, NOTHING, scale * 0.8, thickness) > 0.9


@pytest.mark.parametrize("position", ["top-right", "bottom-left", "bottom-right"])
def test_positions(position):
    image = grey()
    Overlay(OverlayConfig(position=position)).draw(image, CONTENT)
    darkened = np.argwhere(image[..., 0] < 100)
    row, column = darkened.mean(axis=0)
    assert (column > 320) == ("right" in position)
    assert (row > 240) == ("bottom" in position)


def test_colours_come_from_the_config_in_rgb():
    image = grey(level=0)
    config = OverlayConfig(panel_color=(255, 0, 0), panel_opacity=1.0,
                           show=["labels"])
    Overlay(config).draw(image, CONTENT)
    assert image[15, 15].tolist() == [0, 0, 255]


def test_fields_can_be_hidden():
    plain, bare = grey(), grey()
    Overlay(OverlayConfig()).draw(plain, CONTENT)
    hidden = dataclasses.replace(OverlayConfig(), show=["labels"])
    Overlay(hidden).draw(bare, CONTENT)
    assert (bare < 100).sum() < (plain < 100).sum()


def test_rgba_layer_for_the_drm_display():
    layer = Overlay(OverlayConfig()).render_rgba(800, 480, CONTENT)
    assert layer.shape == (480, 800, 4)
    assert layer[-1, -1, 3] == 0
    assert layer[15, 15, 3] == round(255 * 0.6)
    assert (layer[..., :3] == 255).any()


def test_rounded_content_ignores_tiny_changes():
    a = OverlayContent((("banana", 0.971),), 29.6, 20.2, 4.2, 35.1, 48.4)
    b = OverlayContent((("banana", 0.968),), 30.4, 19.8, 4.4, 34.9, 48.1)
    assert a.rounded() == b.rounded()


@pytest.mark.parametrize(
    ("display_fps", "inference_fps", "expected"),
    [
        (29.6, 20.2, "30 fps  infer 20/s 4 ms"),
        (18.2, 0.51, "18 fps  infer 0.5/s 4 ms"),
        (7.46, 2.04, "7.5 fps  infer 2/s 4 ms"),
        (9.96, 0.0, "10 fps  infer 0/s 4 ms"),
    ],
)
def test_slow_rates_keep_their_tenths(display_fps, inference_fps, expected):
    content = dataclasses.replace(CONTENT, display_fps=display_fps,
                                  inference_fps=inference_fps)
    overlay = Overlay(OverlayConfig(show=["labels", "fps", "inference"]))
    assert overlay.figures(content) == expected


def test_a_slow_inference_rate_change_is_redrawn():
    half = OverlayContent((("banana", 0.97),), 18.0, 0.5, 1970.0, 35.0)
    third = dataclasses.replace(half, inference_fps=0.33)
    assert half.rounded() != third.rounded()
