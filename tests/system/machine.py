"""One QEMU virtual machine booted from the cached image, and its controls."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from .image import GUEST_STAGE, GUEST_WEB_PORT, Image, hold_shared
from .qmp import Completed, GuestAgent, QmpClient, VmError

#: The Raspberry Pi 7-inch touch screen's size.
SCREEN_SIZE = (800, 480)
KVM_ENV = "PI_CLASSIFIER_VM_KVM"
CPU_ENV = "PI_CLASSIFIER_VM_CPU"
PR_SET_PDEATHSIG = 1
#: As on a Raspberry Pi: kernel messages on the screen's console (quiet, so
#: errors only), and the serial console for the log of the run. tsc=reliable:
#: after a reboot the emulated processors' clocks start apart, the kernel
#: would then fall back to the HPET, and every clock read, a great many in
#: Python, would cost an emulated device access.
KERNEL_ARGS = ("root=/dev/vda rw console=tty1 console=ttyS0 quiet panic=10 "
               "tsc=reliable cryptomgr.notests")


def _die_with_parent() -> None:
    """In the QEMU child: get SIGTERM when the test process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on the host's loopback that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kvm_requested() -> bool:
    """Whether the user asked for KVM (off by default: it may not work here)."""
    return os.environ.get(KVM_ENV, "") not in ("", "0", "no", "false")


class VirtualMachine:
    """A QEMU machine with a screen, a vivid camera and a guest agent.

    Each machine writes to its own copy-on-write overlay in ``run_dir``, so
    the cached image is never changed and a reboot keeps what the run did.
    The 9p share ``stage`` carries the installer, wheels and model into the
    guest at :data:`GUEST_STAGE`. The guest's one network card is QEMU's
    user network with ``restrict=on``: the guest reaches nothing outside,
    and ``web_url`` (a port on the host's loopback) is forwarded to the web
    view's port in the guest.

    QEMU runs with ``-no-reboot``: when the guest reboots, QEMU exits after
    the guest's own clean shutdown and :meth:`reboot` starts a new QEMU on
    the same disk, as a power cycle would. A reset inside one QEMU process
    leaves software emulation about 2.5 times slower afterwards (measured
    here: READY 31 s after boot against 19 s from a fresh start).

    Args:
        image: The cached image to boot.
        run_dir: A folder for the overlay, sockets and the serial log.
        memory_mb: Guest memory.
        cpus: Guest processors.
        kvm: Use KVM instead of software emulation.
    """

    def __init__(self, image: Image, run_dir: Path, memory_mb: int = 2048,
                 cpus: int = 2, kvm: bool = False) -> None:
        self.image = image
        self.run_dir = run_dir
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.kvm = kvm
        self.serial_log = run_dir / "serial.log"
        self.started_at = 0.0
        self.web_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._qmp: QmpClient | None = None
        self._agent: GuestAgent | None = None
        self._lock: object | None = None

    # -- start and stop ----------------------------------------------------

    @property
    def overlay(self) -> Path:
        """The machine's copy-on-write disk."""
        return self.run_dir / "overlay.qcow2"

    def start(self) -> None:
        """Make a fresh disk overlay and start QEMU; the guest boots on its own."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = hold_shared(self.image)
        self.overlay.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                        "-b", str(self.image.disk), str(self.overlay)],
                       check=True, timeout=60)
        self.serial_log.unlink(missing_ok=True)
        self.web_port = free_port()
        self._launch()

    def _launch(self) -> None:
        """Start QEMU on the existing overlay and connect to it."""
        for name in ("qmp.sock", "qga.sock"):
            (self.run_dir / name).unlink(missing_ok=True)
        with open(self.run_dir / "qemu.log", "ab") as log_file:
            self.started_at = time.monotonic()
            self._process = subprocess.Popen(
                self.command(self.overlay), stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self._qmp = QmpClient(self.run_dir / "qmp.sock")
        self._agent = GuestAgent(self.run_dir / "qga.sock")

    @property
    def web_url(self) -> str:
        """The guest's web view as the host reaches it (no trailing slash)."""
        return f"http://127.0.0.1:{self.web_port}"

    def command(self, overlay: Path) -> list[str]:
        """The QEMU command line."""
        # Without vmx the guest loads no KVM modules at boot.
        cpu = os.environ.get(CPU_ENV) or "max,vmx=off"
        accel = ["-accel", "kvm", "-cpu", "host"] if self.kvm else [
            "-accel", "tcg,thread=multi", "-cpu", cpu]
        run = self.run_dir
        width, height = SCREEN_SIZE
        return [
            "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-no-reboot",
            *accel,
            "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", KERNEL_ARGS,
            "-drive", f"file={overlay},format=qcow2,if=virtio",
            "-device", f"VGA,xres={width},yres={height}", "-display", "none",
            "-chardev", f"file,id=serial,path={self.serial_log},append=on",
            "-serial", "chardev:serial",
            "-qmp", f"unix:{run / 'qmp.sock'},server=on,wait=off",
            "-chardev", f"socket,id=agent,path={run / 'qga.sock'},server=on,wait=off",
            "-device", "virtio-serial",
            "-device", "virtserialport,chardev=agent,name=org.qemu.guest_agent.0",
            "-virtfs", f"local,path={self.image.stage},mount_tag=stage,"
                       "security_model=none,readonly=on",
            "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:"
                       f"{self.web_port}-:{GUEST_WEB_PORT}",
            "-device", "virtio-net-pci,netdev=net0",
        ]

    def wait_booted(self, timeout: float = 120.0) -> float:
        """Wait until the guest agent answers; return seconds since start."""
        self._check_alive()
        self.agent.wait_ready(timeout)
        return time.monotonic() - self.started_at

    def detach(self) -> None:
        """Close the QMP and agent connections so another program may use them.

        QEMU serves one client per socket. The machine keeps running; stop()
        still powers it off.
        """
        for client in (self._qmp, self._agent):
            if client is not None:
                client.close()
        self._qmp = self._agent = None

    def stop(self, timeout: float = 20.0) -> None:
        """Power the machine off; safe to call twice."""
        if self._process is not None and self._process.poll() is None:
            try:
                self.qmp.execute("quit")
            except OSError:
                self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout)
        self.detach()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> VirtualMachine:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None,
                 error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()

    # -- controls ------------------------------------------------------------

    @property
    def qmp(self) -> QmpClient:
        """The QMP connection."""
        if self._qmp is None:
            raise VmError("the machine is not running")
        return self._qmp

    @property
    def agent(self) -> GuestAgent:
        """The guest agent connection."""
        if self._agent is None:
            raise VmError("the machine is not running")
        return self._agent

    def _check_alive(self) -> None:
        """Raise when QEMU has exited, with the end of its log."""
        if self._process is None or self._process.poll() is not None:
            log = (self.run_dir / "qemu.log").read_text(errors="replace")
            raise VmError(f"QEMU exited: {log.strip()[-500:]}")

    def run(self, command: str, timeout: float = 60.0) -> Completed:
        """Run a shell command in the guest and return its outcome."""
        self._check_alive()
        return self.agent.run(command, timeout)

    def sh(self, command: str, timeout: float = 60.0) -> str:
        """Run a shell command in the guest, fail unless it succeeds, return stdout."""
        return self.run(command, timeout).check().stdout

    def screendump(self, path: Path) -> Path:
        """Save the screen as a PNG file on the host."""
        self._check_alive()
        return self.qmp.screendump(path)

    def mount_stage(self) -> None:
        """Mount the 9p share with the installer, wheels and model."""
        self.sh(f"mountpoint -q {GUEST_STAGE} || mount -t 9p -o "
                f"trans=virtio,version=9p2000.L,ro stage {GUEST_STAGE}")

    def reboot(self, timeout: float = 120.0) -> float:
        """Reboot the guest and wait for its agent; return the seconds taken.

        The guest shuts down cleanly with ``systemctl reboot``; QEMU then
        exits (``-no-reboot``) and is started again on the same disk.
        """
        old_boot = self.sh("cat /proc/sys/kernel/random/boot_id").strip()
        started = time.monotonic()
        self.agent.send_only("sleep 1; systemctl reboot")
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise VmError(f"the guest did not shut down within {timeout:.0f} s"
                          ) from None
        self.detach()
        self._launch()
        self.wait_booted(max(1.0, timeout - (time.monotonic() - started)))
        boot = self.sh("cat /proc/sys/kernel/random/boot_id").strip()
        if boot == old_boot:
            raise VmError("the guest answered from before the reboot")
        return time.monotonic() - started

    def save_serial_log(self, target: Path) -> None:
        """Copy the serial console output to ``target``."""
        if self.serial_log.exists():
            shutil.copy2(self.serial_log, target)
