"""The systemd unit: verify, security rating, and its W^X memory setting.

The unit is checked exactly as shipped, inside a throw-away root that holds
this machine's systemd units, its /usr/bin/kill and a stand-in executable at
the installed path /opt/pi-classifier/venv/bin/pi-classifier, since
``systemd-analyze verify`` refuses a unit whose ExecStart= does not exist.
The tools come from Debian's ``systemd`` package.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "pi-classifier.service"
EXAMPLES = REPO / "systemd" / "examples"
INSTALLED_COMMAND = "/opt/pi-classifier/venv/bin/pi-classifier"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 3.0


@pytest.fixture(scope="module")
def analyze() -> str:
    """The systemd-analyze command, or a skip (a failure under CI)."""
    tool = shutil.which("systemd-analyze")
    if tool is None or not SYSTEM_UNITS.is_dir():
        message = ("systemd-analyze and the system units are missing: install "
                   "Debian's systemd package (apt-get install -y systemd)")
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return tool


def _make_root(root: Path, unit_text: str, drop_ins: dict[str, str]) -> None:
    """Lay out a root with the system units, kill, the unit and a stand-in."""
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr" / "lib" / "systemd" / "system",
                    symlinks=True)
    (root / "usr" / "bin").mkdir()
    shutil.copy2(shutil.which("kill") or "/usr/bin/kill", root / "usr" / "bin")
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")

    command = root / INSTALLED_COMMAND.lstrip("/")
    command.parent.mkdir(parents=True)
    command.write_text("#!/bin/sh\nexit 0\n")
    command.chmod(0o755)

    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    (units / UNIT.name).write_text(unit_text)
    if drop_ins:
        folder = units / f"{UNIT.name}.d"
        folder.mkdir()
        for name, text in drop_ins.items():
            (folder / name).write_text(text)


def _verify(analyze: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze, "verify", f"--root={root}", UNIT.name],
        capture_output=True, text=True, timeout=60, check=False,
    )


def _problems(result: subprocess.CompletedProcess[str]) -> str:
    """What verify complained about; unknown keys only warn, so read stderr."""
    text = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        return f"exit {result.returncode}: {text}"
    return text


def test_unit_passes_systemd_analyze_verify(analyze: str, tmp_path: Path) -> None:
    _make_root(tmp_path, UNIT.read_text(), {})

    assert _problems(_verify(analyze, tmp_path)) == ""


def test_unit_with_the_example_drop_ins_passes_verify(
    analyze: str, tmp_path: Path
) -> None:
    drop_ins = {path.name: path.read_text() for path in EXAMPLES.glob("*.conf")}
    assert set(drop_ins) == {"web-lan.conf", "edgetpu.conf"}
    _make_root(tmp_path, UNIT.read_text(), drop_ins)

    assert _problems(_verify(analyze, tmp_path)) == ""


def test_verify_reports_a_broken_unit(analyze: str, tmp_path: Path) -> None:
    # The check above relies on verify complaining: make sure it does here.
    broken = UNIT.read_text().replace(
        "WatchdogSec=10s", "WatchdogSec=10s\nWatchDogSecs=10s"
    )
    _make_root(tmp_path, broken, {})

    assert "WatchDogSecs" in _problems(_verify(analyze, tmp_path))


def test_verify_reports_a_missing_executable(analyze: str, tmp_path: Path) -> None:
    _make_root(tmp_path, UNIT.read_text(), {})
    (tmp_path / INSTALLED_COMMAND.lstrip("/")).unlink()

    assert "is not executable" in _problems(_verify(analyze, tmp_path))


def _exposure(analyze: str, root: Path) -> float:
    result = subprocess.run(
        [analyze, "security", "--offline=true", f"--root={root}", UNIT.name],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)",
                      result.stdout)
    assert match, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))


def test_unit_exposure_is_at_most_3(analyze: str, tmp_path: Path) -> None:
    _make_root(tmp_path, UNIT.read_text(), {})

    assert _exposure(analyze, tmp_path) <= MAX_EXPOSURE


def test_exposure_rises_without_the_sandbox(analyze: str, tmp_path: Path) -> None:
    # Shows the figure measures the hardening: the bare service scores worse.
    bare = "\n".join(
        line for line in UNIT.read_text().splitlines()
        if not line.startswith(("Protect", "Private", "Restrict", "System",
                                "Capability", "NoNew", "Memory", "Lock"))
    )
    _make_root(tmp_path, bare, {})

    assert _exposure(analyze, tmp_path) > MAX_EXPOSURE + 2


def _settings(text: str) -> dict[str, list[str]]:
    """Every Key=value of a unit file, values in order of appearance."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_matches_the_installed_layout() -> None:
    settings = _settings(UNIT.read_text())

    assert settings["ExecStart"] == [
        f"{INSTALLED_COMMAND} run --config /etc/pi-classifier/config.yaml"
    ]
    assert settings["Type"] == ["notify"]
    assert settings["User"] == ["pi-classifier"]
    assert settings["Group"] == ["pi-classifier"]
    assert settings["StateDirectory"] == ["pi-classifier"]
    assert settings["ConfigurationDirectory"] == ["pi-classifier"]
    assert "PI_CLASSIFIER_MODEL_DIR=%S/pi-classifier/models" in settings[
        "Environment"
    ]
    assert settings["SupplementaryGroups"] == ["video render"]
    assert "PrivateDevices" not in settings


# MemoryDenyWriteExecute=yes as systemd 252 applies it: a seccomp filter that
# refuses mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding
# PROT_EXEC and shmat with SHM_EXEC (EPERM). The child installs it, proves it
# is in force, then classifies photos with the project's own code.
SECCOMP_CHILD = r"""
import ctypes, errno, mmap, platform, struct, sys

ARCHES = {
    "x86_64": (0xC000003E, {"mmap": 9, "mprotect": 10, "pkey_mprotect": 329,
                            "shmat": 30}),
    "aarch64": (0xC00000B7, {"mmap": 222, "mprotect": 226, "pkey_mprotect": 288,
                             "shmat": 196}),
}
LOAD, JEQ, AND, RET = 0x20, 0x15, 0x54, 0x06
ALLOW, DENY = 0x7FFF0000, 0x00050000 | errno.EPERM
PROT_ARG = 16 + 2 * 8  # seccomp_data.args[2], low word (little-endian)


def op(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)


def refuse_if(mask, equal):
    return [op(LOAD, PROT_ARG), op(AND, mask), op(JEQ, equal, 0, 1),
            op(RET, DENY), op(RET, ALLOW)]


def install():
    arch, numbers = ARCHES[platform.machine()]
    head = [op(LOAD, 4), op(JEQ, arch, 1, 0), op(RET, ALLOW), op(LOAD, 0)]
    blocks = {"mmap": refuse_if(6, 6), "mprotect": refuse_if(4, 4),
              "shmat": refuse_if(0o100000, 0o100000)}
    order = ["mmap", "mprotect", "pkey_mprotect", "shmat"]
    body, starts = [], {}
    for name in ("mmap", "mprotect", "shmat"):
        starts[name] = len(body)
        body += blocks[name]
    starts["pkey_mprotect"] = starts["mprotect"]
    jumps = []
    for i, name in enumerate(order):
        after = len(order) - i  # the jumps left, then the default ALLOW
        jumps.append(op(JEQ, numbers[name], after + starts[name], 0))
    program = b"".join(head + jumps + [op(RET, ALLOW)] + body)

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    prog = Prog(len(program) // 8, program)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(prog), 0, 0):
        raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")


if sys.argv[1] == "filter":
    install()
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        print("write+execute refused")

import cv2
from pi_classifier.classifier import Classifier

classifier = Classifier(sys.argv[2], sys.argv[3], threads=2)
for path in sys.argv[4:]:
    image = cv2.imread(path)
    ok, jpeg = cv2.imencode(".jpg", image)
    best = classifier.classify(image, top_k=1)[0]
    print(path, best.label, round(best.score, 4), ok, len(jpeg))
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda n: n + 1)
print("ctypes callback", callback(41))
"""


def test_runtime_works_under_memory_deny_write_execute(
    models: Path, images: Path
) -> None:
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip(f"no seccomp numbers here for {platform.machine()}")
    photos = [str(images / name) for name in ("grace_hopper.bmp", "banana_0.jpg")]
    args = [str(models / "mobilenet_v2_1.0_224_quant.tflite"),
            str(models / "imagenet_labels.txt"), *photos]

    def child(mode: str) -> list[str]:
        result = subprocess.run(
            [sys.executable, "-c", SECCOMP_CHILD, mode, *args],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    free, confined = child("free"), child("filter")

    assert confined[0] == "write+execute refused"
    assert confined[1:] == free
    assert len(free) == len(photos) + 1
