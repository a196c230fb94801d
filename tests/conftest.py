"""Shared fixtures: where the real test data lives, and the fake camera rig."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakes.picamera2 import FakeCameraRig, FakePicamera2, Platform

from pi_classifier.sources import picamera2 as picamera2_source

REPO = Path(__file__).resolve().parent.parent
TESTDATA = Path(
    os.environ.get("PI_CLASSIFIER_TESTDATA", REPO.parent / "shared" / "testdata")
)


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The folder of real models, labels and photos (never copied here)."""
    if not (TESTDATA / "models").is_dir():
        pytest.fail(
            f"test data folder {TESTDATA} is missing: the tests read the real "
            "models and photos from ../shared/testdata beside this repository "
            "(or set PI_CLASSIFIER_TESTDATA)",
            pytrace=False,
        )
    return TESTDATA


@pytest.fixture(scope="session")
def models(testdata: Path) -> Path:
    """The test-data models folder."""
    return testdata / "models"


@pytest.fixture(scope="session")
def images(testdata: Path) -> Path:
    """The test-data images folder."""
    return testdata / "images"


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeCameraRig:
    """A fresh fake camera rig behind Picamera2, on a Pi 4 (VC4)."""
    rig = FakeCameraRig()
    monkeypatch.setattr(FakePicamera2, "_rig", rig)
    monkeypatch.setattr(FakePicamera2, "platform", Platform.VC4)
    monkeypatch.setattr(picamera2_source, "DEVICE_TREE_MODEL", tmp_path / "model")
    return rig
