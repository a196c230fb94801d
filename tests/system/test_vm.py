"""The appliance on a real systemd: a QEMU machine with a vivid camera and a screen.

The machine boots the cached image (see image.py) in which deploy/install.sh
installed pi-classifier. The tests run in file order on one machine, each
building on the state the previous one left, and print how long each step
took. Screendumps and logs go to artifacts/vm/.

Run: ``tests/system/setup.sh`` once (as root), then
``python -m pytest -m system tests/system -s`` or
``python -m tests.system.vm test``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from .image import (
    GUEST_STAGE,
    GUEST_WEB_PORT,
    MODEL_FILES,
    PRE_INSTALL_STATE,
    REPO,
    STATE_COMMAND,
    VM_WEB_TOKEN,
    ImageError,
    ensure_image,
    install_command,
    why_not_buildable,
)
from .machine import VirtualMachine, kvm_requested
from .qmp import VmError
from .screen import analyse, changed_region

pytestmark = pytest.mark.system

ARTIFACTS = REPO / "artifacts" / "vm"
UNIT = "pi-classifier.service"
CONFIG = "/etc/pi-classifier/config.yaml"
NEW_NAME = "RELOADED-NAME"
READY_AFTER_BOOT_S = 30.0
BACK_AFTER_KILL_S = 15.0
BOOT_TIMEOUT_S = 180.0
SERVICE_PROPERTIES = (
    "ActiveState", "SubState", "MainPID", "NRestarts", "Result", "StatusText",
    "ActiveEnterTimestampMonotonic", "WatchdogUSec", "LoadState",
)

T = TypeVar("T")
_START = time.monotonic()
_shown: list[Callable[[], contextlib.AbstractContextManager[None]]] = []


@pytest.fixture(scope="module", autouse=True)
def _show_steps(request: pytest.FixtureRequest) -> Iterator[None]:
    """Let step() print past pytest's output capture, so CI logs show times."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        _shown.append(capture.global_and_fixture_disabled)
    yield
    _shown.clear()


def step(message: str) -> None:
    """Print one timed progress line as it happens."""
    shown = _shown[0]() if _shown else contextlib.nullcontext()
    with shown:
        print(f"[vm {time.monotonic() - _START:7.1f} s] {message}", flush=True)


def unavailable(reason: str) -> None:
    """Skip with one line saying why; under CI=true that is a failure."""
    step(f"cannot run the VM system test: {reason}")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"cannot run the VM system test: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def vm() -> Iterator[VirtualMachine]:
    """A booted machine with the appliance installed from the cached image."""
    reason = why_not_buildable()
    if reason:
        unavailable(reason)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        image = ensure_image(step)
    except ImageError as error:
        pytest.fail(f"building the VM image failed: {error}", pytrace=False)
    step(f"image {image.key} ready in {time.monotonic() - started:.1f} s; host load "
         f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    run_dir = Path(tempfile.mkdtemp(prefix="pi-classifier-vm-"))
    machine = VirtualMachine(image, run_dir, kvm=kvm_requested())
    try:
        machine.start()
        booted = machine.wait_booted(BOOT_TIMEOUT_S)
        step(f"booted to the guest agent in {booted:.1f} s")
        yield machine
    finally:
        _save_logs(machine)
        machine.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def _save_logs(machine: VirtualMachine, name: str = "journal.txt") -> None:
    """Keep the journal of this boot and the serial console as artefacts."""
    try:
        (ARTIFACTS / name).write_text(journal(machine))
    except (VmError, TimeoutError) as error:
        step(f"could not read the journal: {error}")
    machine.save_serial_log(ARTIFACTS / "serial.log")


def journal(vm: VirtualMachine) -> str:
    """The journal of this boot for the classifier and kiosk units."""
    return vm.sh("journalctl --no-pager -b -o short-monotonic "
                 "-u pi-classifier -u pi-classifier-kiosk", 30)


# --- helpers ---------------------------------------------------------------


def service(vm: VirtualMachine) -> dict[str, str]:
    """The unit's properties as systemd reports them."""
    output = vm.sh(f"systemctl show {UNIT} -p {','.join(SERVICE_PROPERTIES)}")
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def seconds(timespan: str) -> float:
    """Read a systemd time span such as "10s" or "1min 30s" as seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"([\d.]+)\s*(us|ms|s|min|h)", timespan)
    return sum(float(number) * units[unit] for number, unit in parts)


def top_label(status: dict[str, str]) -> str | None:
    """The top label in the daemon's STATUS= line ("25 fps, binder 23%")."""
    match = re.match(r"\s*[\d.]+ fps, (.+) \d+%\s*$", status.get("StatusText", ""))
    return match.group(1) if match else None


def wait_for(what: str, probe: Callable[[], T | None], timeout: float,
             interval: float = 0.5) -> T:
    """Poll ``probe`` until it returns something, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except (VmError, TimeoutError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def status_where(vm: VirtualMachine, wanted: Callable[[dict[str, str]], bool]
                 ) -> Callable[[], dict[str, str] | None]:
    """A probe: the unit's status once ``wanted`` holds for it."""
    def probe() -> dict[str, str] | None:
        status = service(vm)
        return status if wanted(status) else None
    return probe


def running_with_label(vm: VirtualMachine, other_than_pid: str = "") -> Callable[
        [], dict[str, str] | None]:
    """A probe: the unit's status once it runs (as a new PID) and shows a label."""
    def probe() -> dict[str, str] | None:
        status = service(vm)
        fresh = status.get("MainPID") not in ("0", other_than_pid)
        running = status.get("ActiveState") == "active" and fresh
        return status if running and top_label(status) else None
    return probe


def screen_with_labels(vm: VirtualMachine, name: str) -> Callable[[], Path | None]:
    """A probe: a screendump, once it shows the panel over the camera."""
    def probe() -> Path | None:
        path = vm.screendump(ARTIFACTS / name)
        return path if not analyse(path).problems() else None
    return probe


def assert_screen_shows_labels(path: Path) -> None:
    """The screendump shows the panel with text over the colour bars."""
    report = analyse(path)
    step(f"screen {path.name}: {report}")
    assert not report.problems(), f"{path}: {'; '.join(report.problems())}"


#: Requests to the forwarded port go straight to it, whatever proxy the
#: environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, token: str | None = None, timeout: float = 5.0
             ) -> tuple[int, bytes]:
    """GET ``url`` from the host; return the status and body (0 if unreachable)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with _DIRECT.open(urllib.request.Request(url, headers=headers),
                          timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        # Refused, reset or timed out: QEMU closes the host's connection when
        # the guest does not answer on the forwarded port.
        return 0, b""


def web_labels(vm: VirtualMachine) -> list[str]:
    """The label names in the guest's /status.json, read from the host."""
    code, body = http_get(f"{vm.web_url}/status.json", VM_WEB_TOKEN)
    assert code == 200, f"/status.json with the token: {code} {body[:200]!r}"
    return [label["label"] for label in json.loads(body)["labels"]]


def set_alias(vm: VirtualMachine, label: str, name: str) -> None:
    """Edit the config as an administrator would: alias one label."""
    vm.sh(f"""python3 - <<'EOF'
import yaml
path = {CONFIG!r}
with open(path) as stream:
    config = yaml.safe_load(stream)
config["aliases"] = {{{label!r}: {name!r}}}
with open(path, "w") as stream:
    yaml.safe_dump(config, stream, sort_keys=False)
EOF""")


# --- the checks, in order ------------------------------------------------


def test_service_ready_within_30_seconds_of_boot(vm: VirtualMachine) -> None:
    try:
        status = wait_for("the unit active",
                          status_where(vm, lambda s: s["ActiveState"] == "active"), 90)
    except AssertionError as error:
        raise AssertionError(f"{error}; its journal:\n{journal(vm)}") from None
    ready_s = int(status["ActiveEnterTimestampMonotonic"]) / 1e6
    step(f"READY {ready_s:.1f} s after boot; status: {status}")
    assert status["LoadState"] == "loaded"
    assert status["SubState"] == "running"
    log = journal(vm)
    assert status["NRestarts"] == "0", f"the daemon failed while booting:\n{log}"
    assert 0 < ready_s <= READY_AFTER_BOOT_S, f"READY too late:\n{log}"


def test_screen_shows_labels_over_the_camera(vm: VirtualMachine) -> None:
    status = wait_for("a label in STATUS=", running_with_label(vm), 30)
    step(f"top label: {top_label(status)!r}")
    path = wait_for("labels on the screen", screen_with_labels(vm, "labels.png"), 15)
    assert_screen_shows_labels(path)


def test_web_view_answers_the_host(vm: VirtualMachine) -> None:
    wait_for("a label in STATUS=", running_with_label(vm), 30)
    allowed = vm.sh(f"systemctl show -p IPAddressAllow --value {UNIT}").split()
    step(f"IPAddressAllow={' '.join(allowed)}; web view at {vm.web_url}")
    assert "10.0.0.0/8" in allowed, "install.sh --web-lan left no drop-in"
    wait_for("/healthz answering 200", lambda: http_get(
        f"{vm.web_url}/healthz")[0] == 200, 20)
    assert http_get(f"{vm.web_url}/status.json")[0] == 401
    assert http_get(f"{vm.web_url}/status.json", "wrong-token")[0] == 401
    code, body = http_get(f"{vm.web_url}/status.json?token={VM_WEB_TOKEN}")
    assert code == 200
    document = json.loads(body)
    shown = [(label["label"], label["score"]) for label in document["labels"]]
    step(f"/status.json: healthy={document['healthy']}, "
         f"{document['display_fps']:.1f} fps, labels {shown}")
    assert document["healthy"] is True
    assert document["model"]
    wait_for("the same top label in STATUS= and /status.json",
             lambda: top_label(service(vm)) in web_labels(vm)[:1], 15)


def test_web_view_is_walled_off_without_the_drop_in(vm: VirtualMachine) -> None:
    # The same address rules as without web-lan.conf, applied to the running
    # unit: loopback only. The host's requests then never reach the daemon.
    vm.sh(f"systemctl set-property --runtime {UNIT} IPAddressAllow= "
          "IPAddressAllow=localhost")
    try:
        code, _ = http_get(f"{vm.web_url}/healthz", timeout=5)
        inside = f"http://127.0.0.1:{GUEST_WEB_PORT}/healthz"
        local = vm.sh("python3 -c \"import urllib.request as u; "
                      f"print(u.urlopen('{inside}', timeout=10).status)\"")
    finally:
        vm.sh(f"rm -rf /run/systemd/system.control/{UNIT}.d && "
              "systemctl daemon-reload")
    step(f"without the drop-in: host got {code or 'no answer'}, the guest itself "
         f"{local.strip()}")
    assert code == 0
    assert local.strip() == "200"
    wait_for("/healthz answering the host again", lambda: http_get(
        f"{vm.web_url}/healthz")[0] == 200, 20)


def test_kiosk_console_has_no_login_blanking_or_cursor(vm: VirtualMachine) -> None:
    assert vm.sh("systemctl is-enabled getty@tty1.service || true").strip() == "masked"
    assert vm.sh("systemctl is-active getty@tty1.service || true").strip() == "inactive"
    assert vm.sh("systemctl is-active pi-classifier-kiosk.service").strip() == "active"
    assert vm.sh("cat /sys/module/kernel/parameters/consoleblank").strip() == "0"
    assert vm.sh("cat /sys/class/graphics/fbcon/cursor_blink").strip() == "0"
    arguments = vm.sh("cat /boot/firmware/cmdline.txt").split()
    assert "consoleblank=0" in arguments
    assert "vt.global_cursor_default=0" in arguments


def test_reload_shows_a_new_alias_without_restarting(vm: VirtualMachine) -> None:
    status = wait_for("a label in STATUS=", running_with_label(vm), 30)
    label, pid = top_label(status), status["MainPID"]
    before = wait_for("labels on the screen",
                      screen_with_labels(vm, "before-reload.png"), 15)
    set_alias(vm, label, NEW_NAME)
    vm.sh(f"systemctl reload {UNIT}")
    step(f"aliased {label!r} to {NEW_NAME!r} and reloaded")

    renamed = wait_for(f"{NEW_NAME} in STATUS=",
                       status_where(vm, lambda s: top_label(s) == NEW_NAME), 20)
    step(f"status after reload: {renamed['StatusText']!r}")
    assert renamed["MainPID"] == pid
    after = wait_for("labels on the screen", screen_with_labels(vm, "after-reload.png"),
                     15)
    assert_screen_shows_labels(after)
    changed, box = changed_region(before, after)
    panel = analyse(after).panel
    step(f"{changed} pixels changed, within {box}; panel {panel}")
    assert changed >= 50, "the screen did not change after the reload"
    assert box is not None and panel is not None
    assert box[0] >= panel[0] - 2 and box[1] >= panel[1] - 2
    assert box[2] <= panel[2] + 2 and box[3] <= panel[3] + 2


def test_a_bad_config_on_reload_is_logged_and_the_old_one_kept(
        vm: VirtualMachine) -> None:
    pid = wait_for("a label in STATUS=", running_with_label(vm), 30)["MainPID"]
    vm.sh(f"cp {CONFIG} /root/config.good && sed -i 's/^threads: .*/threads: "
          f"many/' {CONFIG}")
    try:
        check = vm.run(f"/opt/pi-classifier/venv/bin/pi-classifier config check "
                       f"{CONFIG}")
        vm.sh(f"systemctl reload {UNIT}")
        errors = wait_for("the rejection in the journal at priority err", lambda: vm.sh(
            f"journalctl --no-pager -b -u {UNIT} -p err -o cat --since=-30s"
        ).strip(), 20)
    finally:
        vm.sh(f"cp /root/config.good {CONFIG}")
    step(f"config check: exit {check.returncode}: {check.stderr.strip()}; "
         f"journal: {errors.splitlines()[-1]}")
    assert check.returncode == 78
    assert "threads" in check.stderr
    assert "new configuration rejected, keeping the old one" in errors
    assert "threads" in errors.splitlines()[-1]
    status = wait_for("the old settings still in use",
                      status_where(vm, lambda s: top_label(s) == NEW_NAME), 10)
    assert status["MainPID"] == pid
    assert status["ActiveState"] == "active"


def test_kill_9_brings_labels_back_within_15_seconds(vm: VirtualMachine) -> None:
    pid = wait_for("a label in STATUS=", running_with_label(vm), 30)["MainPID"]
    vm.sh(f"kill -9 {pid}")
    killed = time.monotonic()
    status = wait_for("a new daemon with a label", running_with_label(vm, pid),
                      BACK_AFTER_KILL_S)
    path = wait_for("labels on the screen", screen_with_labels(vm, "after-kill.png"),
                    max(0.5, BACK_AFTER_KILL_S - (time.monotonic() - killed)))
    taken = time.monotonic() - killed
    step(f"back as PID {status['MainPID']} with labels on screen {taken:.1f} s "
         "after kill -9")
    assert_screen_shows_labels(path)
    assert taken <= BACK_AFTER_KILL_S


def test_watchdog_restarts_a_stopped_daemon(vm: VirtualMachine) -> None:
    status = wait_for("a label in STATUS=", running_with_label(vm), 30)
    pid, watchdog_s = status["MainPID"], seconds(status["WatchdogUSec"])
    assert watchdog_s > 0, "the unit has no WatchdogSec="
    vm.sh(f"kill -STOP {pid}")
    stopped = time.monotonic()
    status = wait_for("a new daemon with a label", running_with_label(vm, pid),
                      watchdog_s + 60)
    step(f"watchdog ({watchdog_s:.0f} s) replaced PID {pid} by {status['MainPID']} "
         f"in {time.monotonic() - stopped:.1f} s")
    journal = vm.sh(f"journalctl --no-pager -b -u {UNIT}")
    assert "watchdog timeout" in journal.lower()


def test_install_again_changes_nothing_and_needs_no_network(
        vm: VirtualMachine) -> None:
    # The guest's only network is QEMU's restricted one: no route out, and
    # not even the host's side of it answers.
    routes = vm.sh("cat /proc/net/route").splitlines()[1:]
    assert not [line for line in routes if line.split()[1] == "00000000"]
    reach = vm.run("python3 -c \"import socket; "
                   "socket.create_connection(('10.0.2.2', 80), 3)\"")
    assert reach.returncode != 0, "the guest reached the host's network"
    vm.mount_stage()
    config_before = vm.sh(f"sha256sum {CONFIG}")
    state_before = vm.sh(STATE_COMMAND)
    started = time.monotonic()
    output = vm.sh(install_command(), timeout=300)
    step(f"install.sh ran again in {time.monotonic() - started:.1f} s:\n{output}")
    assert "Debian packages already installed" in output
    assert "Python packages in /opt/pi-classifier/venv are up to date" in output
    assert vm.sh(f"sha256sum {CONFIG}") == config_before, "the edited config changed"
    shipped = f"{GUEST_STAGE}/src/config/pi-classifier.yaml"
    assert vm.run(f"cmp {CONFIG}.new {shipped}").returncode == 0
    assert vm.sh(STATE_COMMAND) == state_before
    numpy = vm.sh("/opt/pi-classifier/venv/bin/python -c "
                  "'import numpy; print(numpy.__file__)'")
    assert numpy.startswith("/usr/lib/python3/dist-packages/"), numpy
    wait_for("a label in STATUS=", running_with_label(vm), 30)


def test_install_fetches_a_missing_model_as_the_service_user(
        vm: VirtualMachine) -> None:
    vm.mount_stage()
    models = "/var/lib/pi-classifier/models"
    vm.sh(f"rm {models}/*")
    mirror = f"PI_CLASSIFIER_MODEL_URL=file://{GUEST_STAGE}/models/"
    try:
        output = vm.sh(f"{mirror} {install_command('--no-start', models=None)}",
                       timeout=300)
    finally:
        # Whatever happened, the later checks need the model in place.
        vm.sh(f"test -s {models}/{MODEL_FILES[0]} || install -o pi-classifier "
              f"-m 0644 {GUEST_STAGE}/models/* {models}/")
    step(f"install.sh fetched the model from a local mirror:\n{output}")
    owners = vm.sh(f"stat -c '%U %n' {models}/*").split("\n")
    assert sorted(line for line in owners if line) == [
        f"pi-classifier {models}/imagenet_labels.txt",
        f"pi-classifier {models}/mobilenet_v2_1.0_224_quant.tflite",
    ]
    assert vm.sh(f"cd {models} && sha256sum *") == vm.sh(
        f"cd {GUEST_STAGE}/models && sha256sum *")


def test_reboot_brings_the_classifier_back(vm: VirtualMachine) -> None:
    _save_logs(vm, "journal-before-reboot.txt")
    step(f"rebooted in {vm.reboot(BOOT_TIMEOUT_S):.1f} s")
    status = wait_for("a label in STATUS=", running_with_label(vm), 60)
    ready_s = int(status["ActiveEnterTimestampMonotonic"]) / 1e6
    step(f"READY {ready_s:.1f} s after boot; top label {top_label(status)!r}")
    assert ready_s <= READY_AFTER_BOOT_S, f"READY too late:\n{journal(vm)}"
    path = wait_for("labels on the screen", screen_with_labels(vm, "after-reboot.png"),
                    15)
    assert_screen_shows_labels(path)
    wait_for("/healthz answering the host", lambda: http_get(
        f"{vm.web_url}/healthz")[0] == 200, 15)


def test_a_damaged_model_file_is_refused(vm: VirtualMachine) -> None:
    vm.mount_stage()
    model = "mobilenet_v2_1.0_224_quant.tflite"
    installed = vm.sh(f"sha256sum < /var/lib/pi-classifier/models/{model}")
    vm.sh(f"mkdir -p /tmp/damaged && cp {GUEST_STAGE}/models/* /tmp/damaged/ "
          f"&& printf X | dd of=/tmp/damaged/{model} bs=1 seek=5000 conv=notrunc")
    done = vm.run(install_command("--no-start", models="/tmp/damaged"), 300)
    step(f"install.sh with a damaged model: exit {done.returncode}: "
         f"{done.stderr.strip()}")
    assert done.returncode == 1
    assert "does not match the known SHA-256" in done.stderr
    assert vm.sh(f"sha256sum < /var/lib/pi-classifier/models/{model}") == installed


def test_uninstall_restores_the_system(vm: VirtualMachine) -> None:
    vm.mount_stage()
    output = vm.sh(f"{GUEST_STAGE}/src/deploy/install.sh --uninstall", timeout=120)
    step(f"install.sh --uninstall:\n{output}")
    assert service(vm)["LoadState"] == "not-found"
    assert vm.run("getent passwd pi-classifier").returncode != 0
    assert vm.run("test -e /opt/pi-classifier").returncode != 0
    assert vm.sh(STATE_COMMAND) == vm.sh(f"cat {PRE_INSTALL_STATE}")
    assert vm.sh("systemctl is-enabled getty@tty1.service || true").strip() != "masked"
    assert vm.run(f"test -f {CONFIG}").returncode == 0, "the config was removed"
    assert vm.run("test -f /var/lib/pi-classifier/models/"
                  "mobilenet_v2_1.0_224_quant.tflite").returncode == 0

    vm.sh(f"{GUEST_STAGE}/src/deploy/install.sh --uninstall --purge", timeout=120)
    assert vm.run("test -e /etc/pi-classifier").returncode != 0
    assert vm.run("test -e /var/lib/pi-classifier").returncode != 0
