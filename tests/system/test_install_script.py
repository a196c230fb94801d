"""deploy/install.sh refuses bad use with one line, before it changes anything.

These run on the host in seconds; everything the script installs is
checked in the virtual machine (test_vm.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .image import REPO

SCRIPT = REPO / "deploy" / "install.sh"


def run(*arguments: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run install.sh, as another user when given."""
    command = [str(SCRIPT), *arguments]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                   *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=30,
                          check=False)


def assert_one_line_error(done: subprocess.CompletedProcess[str], text: str) -> None:
    """Exit 1, nothing on stdout, one line on stderr that says ``text``."""
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("install.sh: error: ")
    assert text in lines[0]


def test_help_lists_every_option() -> None:
    done = run("--help")
    assert done.returncode == 0
    for option in ("--wheels", "--runtime", "--model", "--labels", "--no-start",
                   "--web-lan", "--uninstall", "--purge"):
        assert option in done.stdout


@pytest.mark.parametrize(("arguments", "message"), [
    (("--frobnicate",), "unknown option '--frobnicate'"),
    (("--runtime", "tensorflow"), "--runtime must be litert or tflite-runtime"),
    (("--model",), "--model needs a value"),
    (("--purge",), "--purge only goes with --uninstall"),
    (("--uninstall", "--web-lan"), "--web-lan does not go with --uninstall"),
    (("--wheels", "/nonexistent"), "not a folder of wheels"),
    (("--model", "/nonexistent.tflite"), "/nonexistent.tflite is not a file"),
])
def test_bad_arguments_are_refused(arguments: tuple[str, ...], message: str) -> None:
    assert_one_line_error(run(*arguments), message)


def test_wheel_folder_without_wheels_is_refused(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("no wheels here\n")
    assert_one_line_error(run("--wheels", str(tmp_path)), "not a folder of wheels")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the script as nobody")
def test_an_ordinary_user_is_told_to_use_root() -> None:
    assert_one_line_error(run("--no-start", user=65534), "run as root")
