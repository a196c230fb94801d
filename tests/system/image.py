"""The virtual machine's disk image: a Debian root with pi-classifier installed.

The image is built in two layers, each cached under ``PI_CLASSIFIER_VM_CACHE``
(default ``/var/cache/pi-classifier-vm``) and keyed by a hash of its inputs:

* the base: ``debootstrap --variant=minbase`` of Debian bookworm with
  systemd, the kernel, Python, the guest agent and the simulated hardware
  settings (vivid camera, a Raspberry-Pi-like ``cmdline.txt``);
* the image: a copy of the base in which ``deploy/install.sh`` (the same
  script a Pi runs) has installed the project from a folder of wheels built
  on the host, with ``--no-start``, turned into an ext4 disk.

Only the second layer is rebuilt when the project, the installer or the unit
changes. Building needs root, debootstrap, e2fsprogs and the Debian mirror;
booting needs nothing from the network.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CACHE_ENV = "PI_CLASSIFIER_VM_CACHE"
DEFAULT_CACHE = Path("/var/cache/pi-classifier-vm")
MIRROR_ENV = "PI_CLASSIFIER_VM_MIRROR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
TESTDATA_ENV = "PI_CLASSIFIER_TESTDATA"
#: Install from another checkout than this one (to try a change in a copy).
SOURCE_ENV = "PI_CLASSIFIER_VM_SOURCE"

#: Bump to rebuild every cached image after a change this file's hash misses.
RECIPE_VERSION = 1
SUITE = "bookworm"
DISK_SIZE = "3G"
#: What the base system holds. python3-numpy, python3-yaml and python3-venv
#: are the packages install.sh needs on a Debian machine that is not a Pi,
#: so its dpkg-query check finds them and the build needs no apt run there.
PACKAGES = (
    "systemd", "systemd-sysv", "udev", "kmod", "util-linux", "procps",
    "python3", "python3-venv", "python3-numpy", "python3-yaml",
    "v4l-utils", "linux-image-amd64", "initramfs-tools", "qemu-guest-agent",
)
#: Files written into the base system, relative to its root.
GUEST_FILES = {
    "etc/hostname": "pi-classifier-vm\n",
    "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 pi-classifier-vm\n",
    "etc/fstab": "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
    # The camera: vivid's webcam input at /dev/video0. Loading it takes
    # seconds under emulation, so it loads from the start of the boot beside
    # everything else (as a Pi's camera driver does), not on its critical
    # path. The classifier is ordered after udev has set the device up, as
    # it would be after a real camera's.
    "etc/modprobe.d/vivid.conf": "options vivid n_devs=1 node_types=0x1\n",
    "etc/systemd/system/vivid-camera.service": (
        "[Unit]\nDescription=Simulated camera (vivid) at /dev/video0\n"
        "DefaultDependencies=no\nBefore=pi-classifier.service\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        "ExecStart=/sbin/modprobe vivid\n"
        "ExecStartPost=/bin/udevadm wait --timeout=60 /dev/video0\n"
        "[Install]\nWantedBy=sysinit.target\n"
    ),
    # vivid writes counters and clocks as text over its picture by default;
    # switched off, the picture is a still colour-bar pattern whose pixels
    # the test can predict column by column.
    "etc/udev/rules.d/70-vivid-still-picture.rules": (
        'ACTION=="add", SUBSYSTEM=="video4linux", ATTR{name}=="vivid-*-vid-cap", '
        'RUN+="/usr/bin/v4l2-ctl --device $devnode --set-ctrl osd_text_mode=2"\n'
    ),
    # Where a Raspberry Pi keeps its kernel command line. Nothing reads it
    # here: it lets the test check that install.sh adds its kiosk arguments
    # and that --uninstall takes exactly those away again.
    "boot/firmware/cmdline.txt": (
        "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 "
        "rootfstype=ext4 fsck.repair=yes rootwait quiet\n"
    ),
    # A small initramfs with just what finds the root disk boots seconds
    # faster under emulation than Debian's default of most modules.
    "etc/initramfs-tools/conf.d/pi-classifier-vm.conf": "MODULES=list\n",
    "etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\next4\n",
}
#: Units of the base system that only cost boot time and CPU in the test
#: machine: background timers, filesystem scrubbing, and login prompts on
#: the other consoles (a Pi runs logind, which starts those on demand).
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
    "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
    "getty-static.service",
)
#: The web view as a presenter opens it to the room: on all addresses, with a
#: token. QEMU forwards a port on the host's loopback to the guest's port.
GUEST_WEB_PORT = 8080
VM_WEB_TOKEN = "vm-test-token-5f0c2a9e"
#: The guest's one network card: QEMU's user network with ``restrict=on``, so
#: nothing inside reaches out, and only the forwarded port reaches in. The
#: address is static (QEMU's default guest address), so no DHCP waits.
GUEST_NETWORK_FILE = "etc/systemd/network/50-vm.network"
GUEST_NETWORK = (
    "[Match]\nName=en* eth*\n[Network]\nAddress=10.0.2.15/24\n"
    "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
)
#: What the installed appliance is told in /etc/pi-classifier/config.yaml,
#: on top of the shipped default, as a person setting it up would write it.
VM_CONFIG = {
    "camera": {"source": "v4l2", "device": "/dev/video0"},
    "display": {"output": "framebuffer", "device": "/dev/fb0"},
    "aliases": {},
    # MobileNet is not sure what a colour-bar pattern is (about 0.2 for its
    # best guess), below the default 0.5 needed to show a label.
    "smoothing": {"threshold_high": 0.1, "threshold_low": 0.05},
    # Under software emulation a second inference thread slows inference
    # down (about 1.2 s instead of 0.85 s for MobileNet v2) and starves the
    # display loop.
    "threads": 1,
    "web": {"enabled": True, "listen": "0.0.0.0", "port": GUEST_WEB_PORT,
            "token": VM_WEB_TOKEN},
}
#: The fallback default config while the repository has none.
TINY_CONFIG = "model: mobilenet_v2_1.0_224_quant\naliases: {}\n"
#: Python packages install.sh asks pip for on a Debian machine (the runtime
#: and OpenCV's headless wheel); their wheels are downloaded for the guest.
GUEST_REQUIREMENTS = ("ai-edge-litert", "opencv-python-headless")
GUEST_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64")
MODEL_FILES = ("mobilenet_v2_1.0_224_quant.tflite", "imagenet_labels.txt")
#: Where the staged files appear inside the guest (9p share) and the chroot.
GUEST_STAGE = "/mnt/stage"
#: A record of what install.sh may touch, taken before it runs; after
#: --uninstall the same command must print the same text.
STATE_COMMAND = (
    "(cd / && sha256sum etc/passwd etc/group etc/shadow etc/gshadow "
    "boot/firmware/cmdline.txt && find etc/systemd/system opt "
    "usr/local/lib -printf '%p -> %l\\n' | sort)"
)
PRE_INSTALL_STATE = "/root/pre-install.state"
BUILD_LOCK_SECONDS = 1800.0
KEEP_IMAGES = 2

Report = Callable[[str], None]


class ImageError(RuntimeError):
    """The image cannot be built here; the message says why in one line."""


@dataclass(frozen=True)
class Image:
    """A built, cached disk image and what boots it.

    Attributes:
        folder: The cache folder of this image.
        disk: The raw ext4 disk; never written (runs use an overlay).
        kernel: The guest's kernel (vmlinuz).
        initrd: The guest's initramfs.
        stage: Files for the guest's 9p share: ``src`` (the installer, unit
            and default config), ``wheels`` and ``models``.
        key: The hash of the inputs.
    """

    folder: Path
    disk: Path
    kernel: Path
    initrd: Path
    stage: Path
    key: str

    @classmethod
    def at(cls, folder: Path) -> Image:
        """The image in a cache folder."""
        return cls(folder, folder / "disk.raw", folder / "vmlinuz",
                   folder / "initrd.img", folder / "stage",
                   folder.name.removeprefix("image-"))


def source_dir() -> Path:
    """The checkout whose installer, unit, config and package go in the image."""
    return Path(os.environ.get(SOURCE_ENV) or REPO)


def cache_dir() -> Path:
    """The folder cached images live in (outside the repository)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def missing_tools() -> list[str]:
    """The host commands the build and the boot need that are not there."""
    tools = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4",
             "chroot", "unshare")
    return [tool for tool in tools if shutil.which(tool) is None]


def why_not_buildable() -> str | None:
    """One line saying why no image can be built or booted here, or None."""
    if sys.platform != "linux":
        return "the QEMU system test needs a Linux host"
    if os.geteuid() != 0:
        return "the QEMU system test needs root (debootstrap, chroot)"
    missing = missing_tools()
    if missing:
        return (f"{', '.join(missing)} not installed: run "
                "tests/system/setup.sh as root first")
    return None


def _digest(*parts: bytes | str) -> str:
    """A short hash of some inputs."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _tree_digest(root: Path) -> str:
    """Hash the names and contents of every file under ``root``."""
    parts: list[bytes | str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts += [str(path.relative_to(root)), path.read_bytes()]
    return _digest(*parts)


def base_key() -> str:
    """The hash of everything the base system is made from."""
    return _digest(str(RECIPE_VERSION), SUITE, _mirror(), " ".join(PACKAGES),
                   json.dumps(GUEST_FILES, sort_keys=True), " ".join(MASKED_UNITS))


def _mirror() -> str:
    """The Debian mirror debootstrap downloads from."""
    return os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR


def _run(command: list[str], what: str, timeout: float, **options: object) -> str:
    """Run a host command; raise ImageError with its last output on failure."""
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=timeout, check=False, **options)
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what} took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise ImageError(f"{what} failed (exit {done.returncode}):\n"
                         + "\n".join(tail))
    return done.stdout


def _chroot(root: Path, command: str, what: str, timeout: float = 900) -> str:
    """Run a shell command in a chroot with /proc mounted, in a clean env.

    The mount lives in a private mount namespace, so it goes away with the
    command whatever happens.
    """
    script = (f"mount -t proc proc {root}/proc && exec chroot {root} "
              f"/usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "
              f"LANG=C.UTF-8 /bin/sh -c {_quote(command)}")
    return _run(["unshare", "--mount", "--propagation", "private", "--fork",
                 "/bin/sh", "-c", script], what, timeout)


def _quote(text: str) -> str:
    """Quote a string for /bin/sh."""
    return "'" + text.replace("'", "'\\''") + "'"


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock on ``path``, waiting at most ``timeout`` s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ImageError(f"{path} stayed locked by another build "
                                     f"for {timeout:.0f} s") from None
                time.sleep(1.0)
        yield


def hold_shared(image: Image) -> object:
    """Take a shared lock on an image so no build evicts it while it runs.

    Returns:
        The open lock file; the lock lasts until it is closed.
    """
    handle = open(image.folder / "in-use.lock", "w")  # noqa: SIM115
    fcntl.flock(handle, fcntl.LOCK_SH)
    return handle


# --- the base system ---------------------------------------------------------


def ensure_base(report: Report) -> Path:
    """Return the root folder of the cached base system, building it if needed."""
    folder = cache_dir() / f"base-{base_key()}"
    if (folder / "complete").exists():
        return folder / "root"
    report(f"building the base system {folder.name} (debootstrap, a few minutes)")
    work = Path(tempfile.mkdtemp(prefix="base-", dir=cache_dir()))
    try:
        _debootstrap(work / "root")
        _write_guest_files(work / "root")
        _chroot(work / "root", "update-initramfs -u -k all && systemctl mask "
                + " ".join(MASKED_UNITS) + " && systemctl enable vivid-camera",
                "trimming the boot", 600)
        (work / "complete").write_text(time.strftime("%F %T\n"))
        shutil.rmtree(folder, ignore_errors=True)
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _evict("base-", keep=1, current=folder)
    return folder / "root"


def _debootstrap(root: Path) -> None:
    """Make a minimal Debian with the recipe's packages."""
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
          SUITE, str(root), _mirror()], "debootstrap", 1800)
    _chroot(root, "apt-get clean", "apt-get clean")


def _write_guest_files(root: Path) -> None:
    """Write the recipe's files into the base system."""
    for relative, text in GUEST_FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# --- what goes into the image --------------------------------------------------


def testdata_dir() -> Path:
    """The read-only test data folder with the real model files."""
    return Path(os.environ.get(TESTDATA_ENV) or REPO.parent / "shared" / "testdata")


def stage_sources(stage: Path) -> None:
    """Copy the installer, unit, default config and project into ``stage``."""
    checkout = source_dir()
    src = stage / "src"
    shutil.copytree(checkout / "deploy", src / "deploy",
                    ignore=shutil.ignore_patterns("ansible", "__pycache__"))
    shutil.copytree(checkout / "systemd", src / "systemd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if (checkout / "README.md").exists():
        shutil.copy2(checkout / "README.md", src / "README.md")
    (src / "config").mkdir()
    default = checkout / "config" / "pi-classifier.yaml"
    (src / "config" / "pi-classifier.yaml").write_text(
        default.read_text() if default.exists() else TINY_CONFIG
    )
    project = stage / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (checkout / name).exists():
            shutil.copy2(checkout / name, project / name)
    shutil.copytree(checkout / "pi_classifier", project / "pi_classifier",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def stage_models(stage: Path) -> None:
    """Copy the default model and labels from the test data into ``stage``."""
    models = stage / "models"
    models.mkdir()
    for name in MODEL_FILES:
        source = testdata_dir() / "models" / name
        if not source.exists():
            raise ImageError(f"{source} is missing: the VM installs the real "
                             "model from the test data folder")
        shutil.copy2(source, models / name)


def guest_numpy(root: Path) -> str:
    """The version of the guest's apt numpy, which pip must keep."""
    return _chroot(root, "python3 -c 'import numpy; print(numpy.__version__)'",
                   "reading the guest's numpy version", 120).strip()


def dependency_wheels(numpy_version: str, report: Report) -> Path:
    """Download (once) the runtime and OpenCV wheels for the guest's Python."""
    key = _digest(numpy_version, " ".join(GUEST_REQUIREMENTS), *GUEST_PLATFORMS)
    folder = cache_dir() / f"wheels-{key}"
    if (folder / "complete").exists():
        return folder
    report("downloading the runtime wheels for the guest's Python 3.11")
    work = Path(tempfile.mkdtemp(prefix="wheels-", dir=cache_dir()))
    try:
        constraints = work / "constraints.txt"
        constraints.write_text(f"numpy=={numpy_version}\n")
        platforms = [f"--platform={p}" for p in GUEST_PLATFORMS]
        _run([sys.executable, "-m", "pip", "download", "--quiet",
              "--disable-pip-version-check", "--only-binary=:all:",
              "--python-version=3.11", "--implementation=cp", "--abi=cp311",
              *platforms, "--dest", str(work / "wheels"), "--constraint",
              str(constraints), *GUEST_REQUIREMENTS], "pip download", 900)
        (work / "wheels" / "complete").write_text("")
        shutil.rmtree(folder, ignore_errors=True)
        (work / "wheels").rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _evict("wheels-", keep=2, current=folder)
    return folder


def build_project_wheel(stage: Path) -> None:
    """Build the project's wheel from the staged copy of its source."""
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
          "--disable-pip-version-check", "--wheel-dir", str(stage / "wheels"),
          str(stage / "project")], "building the project wheel", 300)


def image_key(stage: Path, base: str, wheels: Path) -> str:
    """The hash of everything the image is made from."""
    wheel_names = sorted(p.name for p in wheels.glob("*.whl"))
    return _digest(base, _tree_digest(stage), " ".join(wheel_names),
                   json.dumps(VM_CONFIG, sort_keys=True), STATE_COMMAND,
                   Path(__file__).read_bytes())


# --- the image ---------------------------------------------------------------


def ensure_image(report: Report) -> Image:
    """Return the cached image for the current sources, building what changed.

    Raises:
        ImageError: A step failed; the message says which and why.
    """
    reason = why_not_buildable()
    if reason:
        raise ImageError(reason)
    cache_dir().mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir() / "build.lock", BUILD_LOCK_SECONDS):
        _remove_unfinished()
        base = ensure_base(report)
        wheels = dependency_wheels(guest_numpy(base), report)
        stage = Path(tempfile.mkdtemp(prefix="stage-", dir=cache_dir()))
        try:
            stage_sources(stage)
            stage_models(stage)
            key = image_key(stage, base.parent.name, wheels)
            folder = cache_dir() / f"image-{key}"
            if not (folder / "complete").exists():
                _build_image(folder, base, stage, wheels, report)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        os.utime(folder)
        _evict("image-", keep=KEEP_IMAGES, current=folder)
    return Image.at(folder)


def _build_image(
    folder: Path, base: Path, stage: Path, wheels: Path, report: Report
) -> None:
    """Install the project into a copy of the base and make the disk."""
    report(f"building the image {folder.name} (install.sh in a chroot)")
    build_project_wheel(stage)
    for wheel in wheels.glob("*.whl"):
        shutil.copy2(wheel, stage / "wheels" / wheel.name)
    work = Path(tempfile.mkdtemp(prefix="image-", dir=cache_dir()))
    try:
        # The guest's service user reads the 9p share (a model mirror).
        for folder_to_open in (work, stage):
            folder_to_open.chmod(0o755)
        root = work / "root"
        _run(["cp", "-a", "--reflink=auto", str(base), str(root)],
             "copying the base system", 600)
        _install_in_chroot(root, stage)
        _copy_boot_files(root, work)
        shutil.rmtree(stage / "project")
        shutil.move(str(stage), str(work / "stage"))
        _make_disk(root, work / "disk.raw")
        shutil.rmtree(root)
        (work / "complete").write_text(time.strftime("%F %T\n"))
        shutil.rmtree(folder, ignore_errors=True)
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install_in_chroot(root: Path, stage: Path) -> None:
    """Run deploy/install.sh in the chroot from the staged wheels and model."""
    inside = root / GUEST_STAGE.lstrip("/")
    shutil.copytree(stage, inside)
    _add_network(root)
    _chroot(root, f"{STATE_COMMAND} > {PRE_INSTALL_STATE}",
            "recording the state before install.sh", 120)
    output = _chroot(root, install_command("--no-start", "--web-lan"),
                     "deploy/install.sh in the chroot")
    (root.parent / "install.log").write_text(output)
    _write_vm_config(root / "etc" / "pi-classifier" / "config.yaml")
    shutil.rmtree(inside)
    inside.mkdir()


def _add_network(root: Path) -> None:
    """Give the guest its static address on QEMU's user network."""
    path = root / GUEST_NETWORK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(GUEST_NETWORK)
    _chroot(root, "systemctl enable systemd-networkd.service && "
            "systemctl mask systemd-networkd-wait-online.service",
            "enabling systemd-networkd", 120)


def install_command(*options: str, models: str | None = f"{GUEST_STAGE}/models"
                    ) -> str:
    """The install.sh command line that uses the staged wheels.

    Args:
        options: More options for install.sh.
        models: The folder to give the model and labels from with --model
            and --labels; None leaves them to ``pi-classifier fetch-model``.
    """
    given = [] if models is None else [
        "--model", f"{models}/{MODEL_FILES[0]}",
        "--labels", f"{models}/{MODEL_FILES[1]}",
    ]
    return " ".join([f"{GUEST_STAGE}/src/deploy/install.sh", "--wheels",
                     f"{GUEST_STAGE}/wheels", *given, *options])


def _write_vm_config(path: Path) -> None:
    """Edit the installed config for the VM's camera and screen."""
    config = yaml.safe_load(path.read_text()) or {}
    for key, value in VM_CONFIG.items():
        if isinstance(value, dict) and value:
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _copy_boot_files(root: Path, work: Path) -> None:
    """Take the guest's kernel and initramfs out for QEMU's -kernel/-initrd."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise ImageError("the base system has no kernel or initramfs in /boot")
    shutil.copy2(kernels[-1], work / "vmlinuz")
    shutil.copy2(initrds[-1], work / "initrd.img")


def _make_disk(root: Path, disk: Path) -> None:
    """Make an ext4 disk image holding the root folder."""
    _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(disk),
          DISK_SIZE], "mkfs.ext4", 600)


def _remove_unfinished() -> None:
    """Remove what builds that were killed left behind (call under the lock)."""
    for folder in cache_dir().iterdir():
        if folder.is_dir() and not (folder / "complete").exists():
            shutil.rmtree(folder, ignore_errors=True)


def _evict(prefix: str, keep: int, current: Path) -> None:
    """Remove older cache folders, keeping ``keep`` and any in use."""
    folders = sorted((p for p in cache_dir().glob(f"{prefix}*")
                      if p.is_dir() and p != current and (p / "complete").exists()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in folders[max(0, keep - 1):]:
        lock = old / "in-use.lock"
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(old, ignore_errors=True)
