"""The screendump reader tells a labelled picture from a broken screen."""

from __future__ import annotations

import cv2
import numpy as np

from .screen import BAR_COLOURS_RGB, analyse, changed_region

WIDTH, HEIGHT = 800, 480


def colour_bars() -> np.ndarray:
    """A BGR screen like vivid's picture: 640 px of bars between black sides."""
    screen = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    colours = [(191, 191, 191), *BAR_COLOURS_RGB.values(), (0, 0, 0)]
    for index, (red, green, blue) in enumerate(colours):
        screen[:, 80 + index * 80:160 + index * 80] = (blue, green, red)
    return screen


def with_panel(screen: np.ndarray, text: str) -> np.ndarray:
    """Darken a corner as the overlay does and write a label on it."""
    drawn = screen.copy()
    region = drawn[12:244, 27:400]
    region[:] = (region * 0.4).astype(np.uint8)
    cv2.putText(drawn, text, (40, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5,
                (255, 255, 255), 3)
    return drawn


def save(tmp_path, name: str, screen: np.ndarray):
    path = tmp_path / name
    cv2.imwrite(str(path), screen)
    return path


def test_panel_with_text_over_the_bars_passes(tmp_path) -> None:
    report = analyse(save(tmp_path, "ok.png", with_panel(colour_bars(), "binder")))
    assert report.problems() == []
    assert report.panel is not None
    left, top, right, bottom = report.panel
    # Over the black side the dark panel shows only where the text is.
    assert 27 <= left <= 45 and top == 12
    assert 395 <= right <= 400 and 240 <= bottom <= 244


def test_bare_camera_picture_has_no_panel(tmp_path) -> None:
    report = analyse(save(tmp_path, "bare.png", colour_bars()))
    assert report.panel is None
    assert "nothing is drawn over the picture" in report.problems()


def test_black_screen_has_no_camera(tmp_path) -> None:
    black = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    problems = analyse(save(tmp_path, "black.png", with_panel(black, "x"))).problems()
    assert any("colour bars are not there" in problem for problem in problems)


def test_console_text_beside_the_picture_is_caught(tmp_path) -> None:
    screen = with_panel(colour_bars(), "binder")
    for row in range(300, 470, 16):
        cv2.putText(screen, "[ 149.097]", (0, row), cv2.FONT_HERSHEY_PLAIN, 0.9,
                    (255, 255, 255), 1)
    problems = analyse(save(tmp_path, "console.png", screen)).problems()
    assert any("outside the panel" in problem for problem in problems)


def test_a_renamed_label_changes_only_the_panel(tmp_path) -> None:
    before = save(tmp_path, "before.png", with_panel(colour_bars(), "binder"))
    after = save(tmp_path, "after.png", with_panel(colour_bars(), "RELOADED"))
    changed, box = changed_region(before, after)
    assert changed > 100
    assert box is not None
    assert box[0] >= 27 and box[2] <= 400 and box[1] >= 12 and box[3] <= 244
