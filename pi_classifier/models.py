"""Known models, the folder they are kept in, and their verified download."""

from __future__ import annotations

import difflib
import hashlib
import http.client
import logging
import os
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pi_classifier.errors import FetchError, LabelsError, ModelError

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]
Response = http.client.HTTPResponse | urllib.response.addinfourl

DEFAULT_MODEL = "mobilenet_v2_1.0_224_quant"
DEFAULT_BASE_URL = "https://github.com/google-coral/test_data/raw/master/"
MODEL_URL_ENV = "PI_CLASSIFIER_MODEL_URL"
MODEL_DIR_ENV = "PI_CLASSIFIER_MODEL_DIR"
SYSTEM_MODEL_DIR = Path("/var/lib/pi-classifier/models")
LABEL_FILES_BESIDE = ("labels.txt", "imagenet_labels.txt")
CHUNK_BYTES = 64 * 1024
STALE_PART_SECONDS = 3600.0


@dataclass(frozen=True)
class KnownModel:
    """A model or label file pi-classifier knows how to download and verify.

    Attributes:
        name: The name used in the config file and on the command line.
        filename: The file name, both on the server and on disk.
        sha256: The pinned SHA-256 of the file, lowercase hex.
        size: The pinned size of the file in bytes.
        input_size: The model's input (width, height); None for a label file.
        labels: The name of the label file that goes with the model, or None.
        description: One line for ``pi-classifier models``.
        needs_edgetpu: Whether the model only runs with the Edge TPU delegate.

    """

    name: str
    filename: str
    sha256: str
    size: int
    input_size: tuple[int, int] | None
    labels: str | None
    description: str
    needs_edgetpu: bool = False

    @property
    def is_labels(self) -> bool:
        """Whether this entry is a label file rather than a model."""
        return self.input_size is None


@dataclass(frozen=True)
class ModelInfo:
    """What ``pi-classifier models`` shows about one known file.

    Attributes:
        name: The known name.
        filename: The file name on disk.
        kind: ``"model"`` or ``"labels"``.
        input_size: The model's input (width, height); None for a label file.
        size_bytes: Bytes on disk when the file is present, else None.
        cached: Whether the file is present and matches its pinned SHA-256.
        damaged: Whether a file is present but does not match its pin.
        path: Where the file is, or where ``fetch-model`` would put it.
        description: One line about the file.
        default: Whether it is the model used when the config names none.
        needs_edgetpu: Whether it only runs with the Edge TPU delegate.

    """

    name: str
    filename: str
    kind: str
    input_size: tuple[int, int] | None
    size_bytes: int | None
    cached: bool
    damaged: bool
    path: Path
    description: str
    default: bool
    needs_edgetpu: bool


def _registry(*entries: KnownModel) -> dict[str, KnownModel]:
    """Index known files by name."""
    return {entry.name: entry for entry in entries}


KNOWN_MODELS: dict[str, KnownModel] = _registry(
    KnownModel(
        name="mobilenet_v2_1.0_224_quant",
        filename="mobilenet_v2_1.0_224_quant.tflite",
        sha256="7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776",
        size=3610798,
        input_size=(224, 224),
        labels="imagenet_labels",
        description="ImageNet MobileNet v2, 224x224, 8-bit; the default, "
        "best balance of accuracy and speed",
    ),
    KnownModel(
        name="mobilenet_v1_0.25_128_quant",
        filename="mobilenet_v1_0.25_128_quant.tflite",
        sha256="cb273c23ee76374b05b9583177e28aa19744858a7679c56a250e83d0333da785",
        size=525598,
        input_size=(128, 128),
        labels="imagenet_labels",
        description="ImageNet MobileNet v1 (width 0.25), 128x128, 8-bit; "
        "fastest, least accurate",
    ),
    KnownModel(
        name="mobilenet_v1_0.5_160_quant",
        filename="mobilenet_v1_0.5_160_quant.tflite",
        sha256="3cc6d2ca460abd2e0f699a6d0d2550c6b61c6e3b0e27a3616e384ea74cb86f43",
        size=1392846,
        input_size=(160, 160),
        labels="imagenet_labels",
        description="ImageNet MobileNet v1 (width 0.5), 160x160, 8-bit; "
        "fast, modest accuracy",
    ),
    KnownModel(
        name="mobilenet_v1_0.75_192_quant",
        filename="mobilenet_v1_0.75_192_quant.tflite",
        sha256="41daeb22fdcf947e0e5ec32373aa9df7c31f3ef45dbd0ef7b5940fbce3c20f6a",
        size=2652542,
        input_size=(192, 192),
        labels="imagenet_labels",
        description="ImageNet MobileNet v1 (width 0.75), 192x192, 8-bit",
    ),
    KnownModel(
        name="tf2_mobilenet_v2_1.0_224_ptq",
        filename="tf2_mobilenet_v2_1.0_224_ptq.tflite",
        sha256="5d3137241276e79c86d14a74fe43581398ae0e815191d3dba45495b810840e8c",
        size=4070174,
        input_size=(224, 224),
        labels="imagenet_labels",
        description="ImageNet MobileNet v2 from TensorFlow 2, 224x224, "
        "post-training quantized",
    ),
    KnownModel(
        name="mobilenet_v1_0.25_128_quant_edgetpu",
        filename="mobilenet_v1_0.25_128_quant_edgetpu.tflite",
        sha256="a4cb1e493346542248687939fbd7421ab92d74c58b1f0a0018b8f1bdddfcef7e",
        size=801454,
        input_size=(128, 128),
        labels="imagenet_labels",
        description="MobileNet v1 (width 0.25), 128x128, compiled for the "
        "Coral Edge TPU; needs delegate: edgetpu",
        needs_edgetpu=True,
    ),
    KnownModel(
        name="imagenet_labels",
        filename="imagenet_labels.txt",
        sha256="b8aaeb5630c62626a7d124a05c0e14230a7ffdd2136a31d0190a4fb71c1d82f1",
        size=21686,
        input_size=None,
        labels=None,
        description="ImageNet labels for the models above: 1001 lines, "
        "line 0 is background",
    ),
)


def get_known(name: str) -> KnownModel:
    """Look up a known model or label file by its name or file name.

    Args:
        name: A known name such as ``mobilenet_v2_1.0_224_quant``, or its
            file name such as ``mobilenet_v2_1.0_224_quant.tflite``.

    Returns:
        The registry entry.

    Raises:
        ModelError: The name is not known; the message suggests the closest.

    """
    found = _lookup(name)
    if found is None:
        raise ModelError(
            _unknown_message(name.strip(), "model or label file", path_hint=False)
        )
    return found


def _lookup(name: str) -> KnownModel | None:
    """Find a registry entry by name or file name, or None."""
    name = name.strip()
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name]
    return next((m for m in KNOWN_MODELS.values() if m.filename == name), None)


def _unknown_message(name: str, what: str, *, path_hint: bool) -> str:
    """Say a name is unknown, with a did-you-mean and the known names."""
    names = [m.name for m in KNOWN_MODELS.values() if not m.is_labels]
    close = difflib.get_close_matches(name, list(KNOWN_MODELS), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    tail = "; or give the path of a .tflite file" if path_hint else ""
    return f"unknown {what} {name!r}{hint} (known models: {', '.join(names)}{tail})"


def base_url() -> str:
    """Return the download base URL: ``PI_CLASSIFIER_MODEL_URL`` or the default.

    Returns:
        The base URL, ending in a slash.

    """
    return _with_slash(os.environ.get(MODEL_URL_ENV) or DEFAULT_BASE_URL)


def _with_slash(url: str) -> str:
    """Make sure a base URL ends in exactly one slash."""
    return url.rstrip("/") + "/"


def model_url(model: KnownModel, base: str | None = None) -> str:
    """Return the URL a known file is downloaded from.

    Args:
        model: The registry entry.
        base: The base URL; None uses :func:`base_url`.

    Returns:
        The full URL of the file.

    """
    return (_with_slash(base) if base else base_url()) + model.filename


def user_model_dir() -> Path:
    """Return the per-user model folder under the XDG cache directory.

    Returns:
        ``$XDG_CACHE_HOME/pi-classifier/models``, by default under
        ``~/.cache``.

    """
    cache = os.environ.get("XDG_CACHE_HOME")
    if not cache:
        try:
            cache = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):
            cache = str(Path(tempfile.gettempdir()) / f"pi-classifier-{os.getuid()}")
    return Path(cache).expanduser() / "pi-classifier" / "models"


def _can_create(path: Path) -> bool:
    """Whether this process can write in ``path`` or create it."""
    probe = path
    try:
        while not probe.exists():
            if probe.parent == probe:
                return False
            probe = probe.parent
        return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a regular file; False when it cannot be looked at."""
    try:
        return path.is_file()
    except OSError:
        return False


def model_dir() -> Path:
    """Return the folder known models are downloaded into.

    ``PI_CLASSIFIER_MODEL_DIR`` when set; else the system folder
    ``/var/lib/pi-classifier/models`` when this process may write there (or
    create it); else the per-user cache folder. The folder is not created.

    Returns:
        The model folder.

    """
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        path, why = Path(env).expanduser(), f"set by {MODEL_DIR_ENV}"
    elif _can_create(SYSTEM_MODEL_DIR):
        path, why = SYSTEM_MODEL_DIR, "system folder, writable"
    else:
        path, why = user_model_dir(), "user cache, system folder not writable"
    log.info("model folder: %s (%s)", path, why)
    return path


def _search_dirs() -> list[Path]:
    """Folders where a downloaded copy may already be, in order of preference.

    Without ``PI_CLASSIFIER_MODEL_DIR`` both the system folder and the user
    cache are searched, so a copy fetched by root serves other users too.
    """
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return [Path(env).expanduser()]
    return list(dict.fromkeys([SYSTEM_MODEL_DIR, user_model_dir()]))


def file_sha256(path: Path) -> str:
    """Return the SHA-256 of a file as lowercase hex.

    Args:
        path: The file to hash.

    Returns:
        The hex digest.

    Raises:
        OSError: The file cannot be read.

    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def is_verified(path: Path, model: KnownModel) -> bool:
    """Whether ``path`` holds exactly the pinned bytes of ``model``.

    Args:
        path: The file to check.
        model: The registry entry it should match.

    Returns:
        True when the size and SHA-256 match; False when the file is missing,
        unreadable or different.

    """
    try:
        if not path.is_file() or path.stat().st_size != model.size:
            return False
        return file_sha256(path) == model.sha256
    except OSError as error:
        log.warning("cannot read %s: %s", path, error.strerror or error)
        return False


def find_cached(model: KnownModel) -> Path | None:
    """Return a verified downloaded copy of a known file, or None.

    Args:
        model: The registry entry.

    Returns:
        The first verified copy in the model folders, or None.

    """
    for directory in _search_dirs():
        candidate = directory / model.filename
        if is_verified(candidate, model):
            return candidate
    return None


@dataclass
class _Job:
    """One download: what, from where, to where, and how patiently."""

    model: KnownModel
    url: str
    target: Path
    timeout: float
    progress: Progress | None

    @property
    def host(self) -> str:
        """The server part of the URL, for messages."""
        return urllib.parse.urlsplit(self.url).netloc or self.url

    def by_hand(self) -> str:
        """Say how to put the file in place without this download."""
        return f"put the file at {self.target} by hand from {self.url}"


def fetch(
    model: KnownModel,
    directory: Path,
    *,
    base_url: str | None = None,
    progress: Progress | None = None,
    timeout: float = 30,
) -> Path:
    """Download a known file into ``directory`` and verify it.

    The bytes are streamed into ``.FILENAME.part-XXXX`` in the same folder,
    hashed on the way, checked against the pinned size and SHA-256, synced
    to disk and only then renamed into place. On any failure or interruption
    (KeyboardInterrupt included) the temporary file is removed and nothing
    is left at the final path. A damaged copy already there is removed first.

    Args:
        model: The registry entry to download.
        directory: The folder to put the file in; created when missing.
        base_url: Where the files are served; None uses
            ``PI_CLASSIFIER_MODEL_URL`` or the default. ``file://`` URLs work
            too, for a mirror on local media.
        progress: Called as ``progress(done, total)`` with bytes received and
            the expected total (None when unknown), at the start and after
            every chunk.
        timeout: Seconds to wait for the connection and for each read. It
            does not bound the whole download, which a slow but steady server
            may stretch; the pinned size bounds how much is read.

    Returns:
        The path of the verified file.

    Raises:
        FetchError: The download failed; the message says why in one sentence.

    """
    directory = Path(directory).expanduser()
    target = directory / model.filename
    if is_verified(target, model):
        log.info("%s is already downloaded and verified at %s", model.name, target)
        return target

    _prepare_directory(directory, target, model)
    job = _Job(model, model_url(model, base_url), target, timeout, progress)
    log.info("downloading %s from %s to %s", model.name, job.url, target)
    _download(job)
    log.info("saved %s (%d bytes, SHA-256 verified)", target, model.size)
    return target


def fetch_known(
    name: str,
    directory: Path | None = None,
    *,
    progress_for: Callable[[str], Progress] | None = None,
    timeout: float = 30,
) -> list[Path]:
    """Download a known model and its label file, as ``fetch-model`` does.

    Args:
        name: A known model or label file name (or its file name).
        directory: The folder to put the files in; None uses
            :func:`model_dir`.
        progress_for: Called with each file name to get the progress
            callback for that file's download.
        timeout: Passed to :func:`fetch`.

    Returns:
        The paths of the verified files, the model first.

    Raises:
        ModelError: The name is not known.
        FetchError: A download failed.

    """
    model = get_known(name)
    wanted = [model] + ([KNOWN_MODELS[model.labels]] if model.labels else [])
    folder = Path(directory).expanduser() if directory is not None else model_dir()
    paths = []
    for entry in wanted:
        progress = progress_for(entry.filename) if progress_for else None
        paths.append(fetch(entry, folder, progress=progress, timeout=timeout))
    return paths


def _prepare_directory(directory: Path, target: Path, model: KnownModel) -> None:
    """Create the folder, drop a damaged copy and old leftovers."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            log.warning("removing %s: it does not match its pinned SHA-256", target)
            target.unlink()
    except FileExistsError:
        raise FetchError(f"{directory} is a file, not a folder") from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise FetchError(f"cannot write to {directory}: {reason}") from None

    _remove_stale_parts(directory, model)


def _remove_stale_parts(directory: Path, model: KnownModel) -> None:
    """Remove temporary files an earlier, killed download left behind.

    Only files older than an hour are removed, so a download running at the
    same time in another process keeps its temporary file.
    """
    cutoff = time.time() - STALE_PART_SECONDS
    for part in directory.glob(f".{model.filename}.part-*"):
        try:
            if part.stat().st_mtime < cutoff:
                part.unlink()
                log.info("removed leftover %s", part)
        except OSError:
            continue


def _download(job: _Job) -> None:
    """Stream into a temporary file, verify, sync and rename into place."""
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{job.model.filename}.part-", dir=job.target.parent
        )
    except OSError as error:
        reason = error.strerror or str(error)
        raise FetchError(f"cannot write to {job.target.parent}: {reason}") from None

    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(job, out)
            _sync(job, out)
        _check_digest(job, digest)
        _install(job, temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise

    _sync_directory(job.target.parent)


def _install(job: _Job, temp: Path) -> None:
    """Make the verified file readable by all and rename it into place."""
    try:
        os.chmod(temp, 0o644)
        os.replace(temp, job.target)
    except OSError as error:
        raise _disk_error(job, error) from None


def _stream(job: _Job, out: BinaryIO) -> str:
    """Copy the response into ``out``, reporting progress; return the hash."""
    digest = hashlib.sha256()
    done = 0
    with _open(job) as response:
        total = _content_length(job, response)
        expected = total if total is not None else job.model.size
        _report(job, 0, expected)
        while chunk := _read(job, response, done, expected):
            done += len(chunk)
            if done > expected:
                raise FetchError(
                    f"server sent more than the expected {expected} bytes for "
                    f"{job.model.name} from {job.url}; it is not the pinned file"
                )
            digest.update(chunk)
            _write(job, out, chunk)
            _report(job, done, expected)

    if done < expected:
        raise FetchError(_stopped_message(job, done, expected))
    return digest.hexdigest()


def _open(job: _Job) -> Response:
    """Open the URL, turning every failure into a one-sentence FetchError."""
    headers = {"User-Agent": "pi-classifier", "Accept-Encoding": "identity"}
    try:
        request = urllib.request.Request(job.url, headers=headers)
        return urllib.request.urlopen(request, timeout=job.timeout)
    except ValueError:
        raise FetchError(
            f"{job.url} is not a valid download address; check {MODEL_URL_ENV}"
        ) from None
    except (OSError, http.client.HTTPException) as error:
        raise _open_error(job, error) from None


def _open_error(job: _Job, error: BaseException) -> FetchError:
    """Describe a failure to connect or to get an answer."""
    if isinstance(error, urllib.error.HTTPError):
        return FetchError(f"server answered {error.code} {error.reason} for {job.url}")
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, TimeoutError):
        return FetchError(_timeout_message(job))
    if isinstance(reason, socket.gaierror):
        detail = f"name lookup failed ({reason.strerror or reason})"
    elif isinstance(reason, OSError):
        detail = reason.strerror or str(reason) or type(reason).__name__
    else:
        detail = str(reason) or type(reason).__name__
    if urllib.parse.urlsplit(job.url).scheme == "file":
        return FetchError(f"cannot read {job.url}: {detail}; {job.by_hand()}")
    return FetchError(f"cannot reach {job.host}: {detail}; {job.by_hand()}")


def _timeout_message(job: _Job) -> str:
    """Say the server stopped answering within the timeout."""
    return (
        f"download of {job.model.name} from {job.url} timed out after "
        f"{job.timeout:g} seconds without data; {job.by_hand()}"
    )


def _stopped_message(job: _Job, done: int, expected: int) -> str:
    """Say the connection ended before the whole file arrived."""
    return (
        f"download of {job.model.name} stopped after {done} of {expected} bytes "
        f"because the connection closed; try again or {job.by_hand()}"
    )


def _content_length(job: _Job, response: Response) -> int | None:
    """Read Content-Length and check it against the pinned size."""
    header = response.headers.get("Content-Length")
    try:
        total = int(header) if header is not None else None
    except ValueError:
        total = None
    if total is not None and total != job.model.size:
        raise FetchError(
            f"server offers {total} bytes for {job.model.name} at {job.url} but "
            f"the pinned file has {job.model.size}; it is not the expected file"
        )
    return total


def _read(job: _Job, response: Response, done: int, expected: int) -> bytes:
    """Read one chunk, turning network failures into FetchError."""
    try:
        return response.read(CHUNK_BYTES)
    except TimeoutError:
        raise FetchError(_timeout_message(job)) from None
    except (OSError, http.client.HTTPException):
        raise FetchError(_stopped_message(job, done, expected)) from None


def _write(job: _Job, out: BinaryIO, chunk: bytes) -> None:
    """Write one chunk, turning disk failures into FetchError."""
    try:
        out.write(chunk)
    except OSError as error:
        raise _disk_error(job, error) from None


def _sync(job: _Job, out: BinaryIO) -> None:
    """Flush the temporary file to disk before it is renamed."""
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as error:
        raise _disk_error(job, error) from None


def _disk_error(job: _Job, error: OSError) -> FetchError:
    """Describe a failure to write the downloaded bytes."""
    reason = error.strerror or str(error)
    return FetchError(
        f"cannot write {job.model.filename} to {job.target.parent}: {reason}"
    )


def _report(job: _Job, done: int, total: int | None) -> None:
    """Tell the progress callback, if any, how far the download is."""
    if job.progress is not None:
        job.progress(done, total)


def _check_digest(job: _Job, digest: str) -> None:
    """Compare the streamed hash with the pin."""
    if digest != job.model.sha256:
        raise FetchError(
            f"checksum mismatch for {job.model.name} from {job.url}: expected "
            f"SHA-256 {job.model.sha256}, got {digest}"
        )


def _sync_directory(directory: Path) -> None:
    """Make the rename durable; some filesystems cannot, which is harmless."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return

    try:
        os.fsync(fd)
    except OSError:
        log.debug("cannot sync folder %s", directory)
    finally:
        os.close(fd)


def _looks_like_path(spec: str) -> bool:
    """Whether a model or labels setting is meant as a file path."""
    return (
        "/" in spec
        or os.sep in spec
        or spec.startswith(("~", "."))
        or spec.endswith((".tflite", ".txt"))
    )


def _resolve_known(
    model: KnownModel,
    *,
    allow_fetch: bool,
    progress: Progress | None,
    error: type[ModelError] | type[LabelsError],
) -> Path:
    """Find a verified copy of a known file, downloading it when allowed."""
    found = find_cached(model)
    if found is not None:
        return found

    directory = model_dir()
    target = directory / model.filename
    if not allow_fetch:
        raise error(_not_cached_message(model, target))
    return fetch(model, directory, progress=progress)


def _not_cached_message(model: KnownModel, target: Path) -> str:
    """Say a known file is missing and how to put it in place."""
    damaged = _is_file(target)
    state = "does not match its pinned SHA-256" if damaged else "is missing"
    return (
        f"{model.name} {state} at {target}; run 'pi-classifier fetch-model "
        f"{model.name}' or put the file there by hand from {model_url(model)}"
    )


def resolve_model(
    spec: str, *, allow_fetch: bool = True, progress: Progress | None = None
) -> Path:
    """Turn the ``model:`` setting into the path of a model file.

    Args:
        spec: A known model name (or its file name), or the path of a
            ``.tflite`` file, which is used as it is.
        allow_fetch: Whether a known model that is not downloaded yet may be
            downloaded now.
        progress: Passed to :func:`fetch` when a download happens.

    Returns:
        The path of the model file.

    Raises:
        ModelError: The file does not exist, the name is unknown, or a known
            model is not downloaded and may not be fetched.
        FetchError: A download was needed and failed.

    """
    spec = spec.strip()
    if not spec:
        raise ModelError("model is empty; set model: to a known name or a file")

    known = KNOWN_MODELS.get(spec)
    if known is None and _looks_like_path(spec):
        path = Path(spec).expanduser()
        if _is_file(path):
            return _readable(path, ModelError)
        known = _lookup(spec) if os.sep not in spec and "/" not in spec else None
        if known is None:
            raise ModelError(_missing_file_message("model", path))
    if known is None:
        raise ModelError(_unknown_message(spec, "model", path_hint=True))
    if known.is_labels:
        raise ModelError(f"{spec!r} is a label file, not a model; set it as labels:")
    return _resolve_known(
        known, allow_fetch=allow_fetch, progress=progress, error=ModelError
    )


def _readable(path: Path, error: type[ModelError] | type[LabelsError]) -> Path:
    """Return ``path`` when this process may read it, else raise ``error``."""
    if not os.access(path, os.R_OK):
        raise error(f"cannot read {path}: permission denied")
    return path


def _missing_file_message(what: str, path: Path) -> str:
    """Say a configured file is missing, unreachable or not a regular file."""
    try:
        if path.is_dir():
            return f"{what} path {path} is a folder, not a file"
        if path.exists():
            return f"{what} path {path} is not a regular file"
    except OSError as error:
        return f"cannot look at {what} file {path}: {error.strerror or error}"
    return f"{what} file {path} does not exist"


def resolve_labels(
    spec: str | None,
    model_path: Path,
    *,
    allow_fetch: bool = True,
    progress: Progress | None = None,
) -> Path:
    """Turn the ``labels:`` setting into the path of a label file.

    In order: the explicit setting (a path, or a known label name); the
    label file of the known model whose file name ``model_path`` has; a
    ``labels.txt`` or ``imagenet_labels.txt`` beside the model file.

    Args:
        spec: The ``labels:`` setting, or None when not set.
        model_path: The model file in use.
        allow_fetch: Whether a known label file may be downloaded now.
        progress: Passed to :func:`fetch` when a download happens.

    Returns:
        The path of the label file.

    Raises:
        LabelsError: No label file can be found, or the given one is missing.
        FetchError: A download was needed and failed.

    """
    if spec is not None and spec.strip():
        return _explicit_labels(spec.strip(), allow_fetch, progress)

    owner = _lookup(Path(model_path).name)
    if owner is not None and owner.labels is not None:
        return _resolve_known(
            KNOWN_MODELS[owner.labels],
            allow_fetch=allow_fetch,
            progress=progress,
            error=LabelsError,
        )

    for name in LABEL_FILES_BESIDE:
        beside = Path(model_path).parent / name
        if _is_file(beside):
            return _readable(beside, LabelsError)
    raise LabelsError(
        f"no label file found for {model_path}; set labels: to the label file "
        "of this model"
    )


def _explicit_labels(spec: str, allow_fetch: bool, progress: Progress | None) -> Path:
    """Resolve a ``labels:`` setting: a path, or a known label file name."""
    path = Path(spec).expanduser()
    if _is_file(path):
        return _readable(path, LabelsError)

    known = _lookup(spec)
    if known is not None and known.is_labels and os.sep not in spec:
        return _resolve_known(
            known, allow_fetch=allow_fetch, progress=progress, error=LabelsError
        )
    raise LabelsError(_missing_file_message("label", path))


def list_models(*, include_labels: bool = False) -> list[ModelInfo]:
    """Describe every known model and whether it is downloaded.

    Each present file is hashed to tell a good copy from a damaged one, which
    reads a few megabytes per downloaded model.

    Args:
        include_labels: Whether to list the label files too (their
            ``input_size`` is None).

    Returns:
        One entry per known model, in registry order.

    """
    directory = model_dir()
    return [
        _info(model, directory)
        for model in KNOWN_MODELS.values()
        if include_labels or not model.is_labels
    ]


def _info(model: KnownModel, directory: Path) -> ModelInfo:
    """Describe one registry entry for :func:`list_models`."""
    cached = find_cached(model)
    present = cached or _first_present(model) or directory / model.filename
    size = _size_of(present)
    return ModelInfo(
        name=model.name,
        filename=model.filename,
        kind="labels" if model.is_labels else "model",
        input_size=model.input_size,
        size_bytes=size,
        cached=cached is not None,
        damaged=cached is None and size is not None,
        path=present,
        description=model.description,
        default=model.name == DEFAULT_MODEL,
        needs_edgetpu=model.needs_edgetpu,
    )


def _first_present(model: KnownModel) -> Path | None:
    """Find the first copy of a file in the model folders, verified or not."""
    for directory in _search_dirs():
        candidate = directory / model.filename
        if _is_file(candidate):
            return candidate
    return None


def _size_of(path: Path) -> int | None:
    """Return the size of a regular file, or None when there is none to see."""
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None
