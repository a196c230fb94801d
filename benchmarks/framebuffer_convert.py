"""Time FramebufferDisplay.show() into a file-backed 1080p framebuffer."""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from pi_classifier.config import DisplayConfig
from pi_classifier.displays.framebuffer import FramebufferDisplay

log = logging.getLogger(__name__)

SCREEN = (1920, 1080)
FRAME_SIZES = ((640, 480), (1280, 720), (1920, 1080))


def fake_framebuffer(folder: Path, bits: int) -> tuple[Path, Path]:
    """Write sysfs files and a device file for a 1080p framebuffer."""
    width, height = SCREEN
    stride = width * bits // 8
    sysfs = folder / f"sysfs{bits}"
    (sysfs / "fb0").mkdir(parents=True)
    (sysfs / "fb0" / "virtual_size").write_text(f"{width},{height}\n")
    (sysfs / "fb0" / "bits_per_pixel").write_text(f"{bits}\n")
    (sysfs / "fb0" / "stride").write_text(f"{stride}\n")
    device = folder / f"dev{bits}" / "fb0"
    device.parent.mkdir()
    device.write_bytes(bytes(stride * height))
    return device, sysfs


def time_show(display: FramebufferDisplay, size: tuple[int, int], frames: int) -> float:
    """Return the mean milliseconds per show() of random frames of one size."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size[1], size[0], 3), np.uint8) for _ in range(4)]
    display.show(images[0])
    start = time.perf_counter()
    for index in range(frames):
        display.show(images[index % len(images)])
    return (time.perf_counter() - start) * 1000 / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        print(f"screen {SCREEN[0]}x{SCREEN[1]}, {args.frames} frames each")
        for bits in (16, 24, 32):
            device, sysfs = fake_framebuffer(Path(folder), bits)
            config = DisplayConfig(device=str(device), hide_cursor=False)
            with FramebufferDisplay(config, sysfs_root=sysfs) as display:
                for size in FRAME_SIZES:
                    ms = time_show(display, size, args.frames)
                    print(f"{bits:2d} bpp  {size[0]:4d}x{size[1]:<4d}  {ms:6.2f} ms")


if __name__ == "__main__":
    main()
