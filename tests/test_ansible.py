"""The Ansible deployment: syntax, lint, and the role's tasks run on this machine.

The role's check, config, staging and uninstall tasks run here against
localhost (files go to a temporary folder), validating with the real
``pi-classifier config check`` of the tree under test and a stub install.sh
that logs how it was called. The service tasks need systemd as PID 1 and are
not run.

ansible-core and ansible-lint live in a virtual environment of their own;
``$PI_CLASSIFIER_ANSIBLE_BIN`` names its bin folder, else PATH is searched.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pi_classifier.config import Config, config_to_dict, load_config

REPO = Path(__file__).resolve().parent.parent
ANSIBLE_DIR = REPO / "deploy" / "ansible"
ROLES = ANSIBLE_DIR / "roles"
DEFAULTS = ROLES / "pi_classifier" / "defaults" / "main.yml"
INVENTORY = ANSIBLE_DIR / "inventory.example.yml"
TOOLS = ("ansible-playbook", "ansible-inventory", "ansible-lint")
INSTALL_HINT = (
    "python3 -m venv .venv-ansible && .venv-ansible/bin/pip install ansible-core "
    "ansible-lint, then PI_CLASSIFIER_ANSIBLE_BIN=$PWD/.venv-ansible/bin"
)

PLAYBOOK = """\
- name: Run one tasks file of the pi_classifier role on this machine
  hosts: all
  gather_facts: false
  tasks:
    - name: Run the tasks file
      ansible.builtin.include_role:
        name: pi_classifier
        tasks_from: {tasks}
    # The role's handlers restart the service through systemd.
    - name: Stop before the handlers
      ansible.builtin.meta: end_play
"""

# The installed command is the console script of pi_classifier.cli; this runs
# the same code from the tree under test.
CHECKER = """\
#!/bin/sh
exec {python} -m pi_classifier "$@"
"""

STUB_INSTALL = """\
#!/bin/sh
echo "$@" >> {log}
case "$1" in
  --uninstall) rm -f {command} ;;
  *) mkdir -p {bindir} && touch {command} ;;
esac
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment to run the Ansible tools in, or a skip (CI: failure)."""
    bindir = os.environ.get("PI_CLASSIFIER_ANSIBLE_BIN")
    missing = [name for name in TOOLS if shutil.which(name, path=bindir) is None]
    if missing:
        message = f"{', '.join(missing)} not found; install with: {INSTALL_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    folder = str(Path(shutil.which(TOOLS[0], path=bindir) or "").parent)
    return {
        **os.environ,
        "PATH": folder + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROLES),
        "ANSIBLE_HOME": str(tmp_path_factory.mktemp("ansible-home")),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
    }


def _run(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def _play(env: dict[str, str], tmp_path: Path, tasks: str, variables: dict,
          inventory: str = "localhost,") -> subprocess.CompletedProcess:
    """Run one tasks file of the role here, with extra variables."""
    playbook = tmp_path / f"run-{tasks}"
    playbook.write_text(PLAYBOOK.format(tasks=tasks))
    settings = {"ansible_connection": "local",
                "ansible_python_interpreter": sys.executable, **variables}
    return _run(env, "ansible-playbook", "-i", inventory, str(playbook),
                "-e", json.dumps(settings), cwd=tmp_path)


def _output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def _checker(tmp_path: Path) -> Path:
    checker = tmp_path / "pi-classifier"
    checker.write_text(CHECKER.format(python=sys.executable))
    checker.chmod(0o755)
    return checker


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merged(result[key], value)
        else:
            result[key] = value
    return result


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the role writes files owned by root, as on the Pi")


def test_playbook_passes_syntax_check(env: dict[str, str]) -> None:
    result = _run(env, "ansible-playbook", "-i", str(INVENTORY), "--syntax-check",
                  "site.yml", cwd=ANSIBLE_DIR)

    assert result.returncode == 0, _output(result)


def test_ansible_lint_passes_the_production_profile(env: dict[str, str]) -> None:
    result = _run(env, "ansible-lint", "-c", str(ANSIBLE_DIR / ".ansible-lint"),
                  str(ANSIBLE_DIR), cwd=REPO)

    assert result.returncode == 0, _output(result)
    assert "Profile 'production' was required, and it passed" in _output(result)


def test_role_defaults_are_the_built_in_config() -> None:
    defaults = yaml.safe_load(DEFAULTS.read_text())

    assert defaults["pi_classifier_config_defaults"] == config_to_dict(Config())


@pytest.mark.usefixtures("as_root")
def test_config_rendered_for_every_example_host(
    env: dict[str, str], tmp_path: Path
) -> None:
    group = "root"
    variables = {
        "pi_classifier_config_path": f"{tmp_path}/{{{{ inventory_hostname }}}}.yaml",
        "pi_classifier_command": str(_checker(tmp_path)),
        "pi_classifier_group": group,
        "vault_kitchen_web_token": "kitchen-secret",
    }

    result = _play(env, tmp_path, "config.yml", variables, inventory=str(INVENTORY))

    assert result.returncode == 0, _output(result)
    listing = _run(env, "ansible-inventory", "-i", str(INVENTORY), "--list",
                   cwd=tmp_path)
    hostvars = json.loads(listing.stdout)["_meta"]["hostvars"]
    assert set(hostvars) == {"hall-pi", "kitchen-pi", "garage-pi", "lab-pi"}
    for host, host_vars in hostvars.items():
        wanted = json.loads(json.dumps(host_vars["pi_classifier_config"]).replace(
            "{{ vault_kitchen_web_token }}", "kitchen-secret"))
        path = tmp_path / f"{host}.yaml"
        assert config_to_dict(load_config(path)) == _merged(
            config_to_dict(Config()), wanted
        ), host
        assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.usefixtures("as_root")
def test_config_that_fails_the_check_is_not_installed(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    base = {"pi_classifier_config_path": str(path),
            "pi_classifier_command": str(_checker(tmp_path)),
            "pi_classifier_group": "root"}
    good = {**base, "pi_classifier_config": {"camera": {"width": 1280}}}
    bad = {**base, "pi_classifier_config": {"camera": {"width": 5}}}

    first = _play(env, tmp_path, "config.yml", good)
    written = path.read_bytes()
    again = _play(env, tmp_path, "config.yml", good)
    rejected = _play(env, tmp_path, "config.yml", bad)

    assert first.returncode == 0, _output(first)
    assert load_config(path).camera.width == 1280
    assert again.returncode == 0, _output(again)
    assert "changed=0" in again.stdout
    assert rejected.returncode != 0
    assert "camera.width" in _output(rejected)
    assert path.read_bytes() == written


def test_unknown_config_keys_are_named(env: dict[str, str], tmp_path: Path) -> None:
    variables = {
        "pi_classifier_config": {"modle": "x", "camera": {"widht": 5, "fps": 10},
                                 "aliases": {"any name": "is fine"}},
    }

    result = _play(env, tmp_path, "check.yml", variables)

    assert result.returncode != 0
    assert "unknown keys: camera.widht, modle" in _output(result)


def test_missing_wheels_are_reported_before_anything_is_copied(
    env: dict[str, str], tmp_path: Path
) -> None:
    variables = {"pi_classifier_wheels_dir": str(tmp_path / "no-wheels"),
                 "pi_classifier_repo_dir": str(REPO)}

    result = _play(env, tmp_path, "check.yml", variables)

    assert result.returncode != 0
    assert f"{tmp_path}/no-wheels must hold the wheels to install" in _output(result)


def _install_fixture(tmp_path: Path) -> tuple[dict[str, Any], Path, Path]:
    """A checkout with a stub install.sh that logs its calls, wheels, a model."""
    repo = tmp_path / "repo"
    for name in ("deploy/pi-classifier-kiosk.service",
                 "systemd/pi-classifier.service", "config/pi-classifier.yaml"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(f"{name}\n")
    log = tmp_path / "install.log"
    command = tmp_path / "opt" / "bin" / "pi-classifier"
    script = repo / "deploy" / "install.sh"
    script.write_text(STUB_INSTALL.format(log=log, command=command,
                                          bindir=command.parent))
    script.chmod(0o755)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "pi_classifier-0.1.0-py3-none-any.whl").write_bytes(b"version 1")
    (wheels / "helper-1.0-py3-none-any.whl").write_bytes(b"helper")
    (tmp_path / "model.tflite").write_bytes(b"TFL3 model")
    (tmp_path / "labels.txt").write_text("background\ncat\n")
    variables = {
        "pi_classifier_repo_dir": str(repo),
        "pi_classifier_wheels_dir": str(wheels),
        "pi_classifier_model_file": str(tmp_path / "model.tflite"),
        "pi_classifier_labels_file": str(tmp_path / "labels.txt"),
        "pi_classifier_stage_dir": str(tmp_path / "stage"),
        "pi_classifier_command": str(command),
    }
    return variables, log, command


def _log_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.usefixtures("as_root")
def test_install_sh_runs_only_when_needed(
    env: dict[str, str], tmp_path: Path
) -> None:
    variables, log, _ = _install_fixture(tmp_path)
    stage = tmp_path / "stage"
    call = (f"--wheels {stage}/wheels --runtime litert "
            f"--model {stage}/models/model.tflite --labels {stage}/models/labels.txt")

    first = _play(env, tmp_path, "stage.yml", variables)
    assert first.returncode == 0, _output(first)
    assert _log_lines(log) == [call]

    second = _play(env, tmp_path, "stage.yml", variables)
    assert second.returncode == 0, _output(second)
    assert "changed=0" in second.stdout
    assert _log_lines(log) == [call]

    wheels = tmp_path / "wheels"
    (wheels / "pi_classifier-0.1.0-py3-none-any.whl").unlink()
    (wheels / "pi_classifier-0.2.0-py3-none-any.whl").write_bytes(b"version 2")
    third = _play(env, tmp_path, "stage.yml", variables)
    assert third.returncode == 0, _output(third)
    assert _log_lines(log) == [call, call]
    assert sorted(p.name for p in (stage / "wheels").iterdir()) == [
        "helper-1.0-py3-none-any.whl", "pi_classifier-0.2.0-py3-none-any.whl"
    ]
    shipped = stage / "systemd" / "pi-classifier.service"
    assert shipped.read_text() == "systemd/pi-classifier.service\n"


@pytest.mark.usefixtures("as_root")
def test_uninstall_and_purge_run_install_sh_only_while_needed(
    env: dict[str, str], tmp_path: Path
) -> None:
    variables, log, command = _install_fixture(tmp_path)
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    variables |= {
        "pi_classifier_config_path": str(config_dir / "config.yaml"),
        "pi_classifier_state_dir": str(tmp_path / "state"),
        "pi_classifier_dropin_dir": str(tmp_path / "dropins"),
    }
    command.parent.mkdir(parents=True)
    command.touch()

    absent = {**variables, "pi_classifier_state": "absent"}
    first = _play(env, tmp_path, "uninstall.yml", absent)
    second = _play(env, tmp_path, "uninstall.yml", absent)
    purged = _play(env, tmp_path, "uninstall.yml",
                   {**variables, "pi_classifier_state": "purged"})

    for result in (first, second, purged):
        assert result.returncode == 0, _output(result)
    # The config folder is still there after --uninstall, so purge runs.
    assert _log_lines(log) == ["--uninstall", "--uninstall --purge"]
    assert not (tmp_path / "stage").exists()
