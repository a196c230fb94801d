"""The model registry, the model folder, and resolving model and label settings."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pi_classifier import models as store
from pi_classifier.errors import FetchError, LabelsError, ModelError

DEFAULT = store.KNOWN_MODELS[store.DEFAULT_MODEL]
SMALL = store.KNOWN_MODELS["mobilenet_v1_0.25_128_quant"]
LABELS = store.KNOWN_MODELS["imagenet_labels"]


@pytest.fixture
def dead_url() -> str:
    """A base URL where nothing listens: any download attempt fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, dead_url):
    """Keep every test off the real network and out of /var/lib and ~/.cache."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv(store.MODEL_URL_ENV, dead_url)
    monkeypatch.setenv(store.MODEL_DIR_ENV, str(tmp_path / "env-models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(store, "SYSTEM_MODEL_DIR", tmp_path / "blocked" / "models")
    (tmp_path / "blocked").write_text("a file, so no folder can be made under it")


@pytest.fixture
def env_dir(tmp_path) -> Path:
    return tmp_path / "env-models"


def put(source_dir: Path, model: store.KnownModel, directory: Path) -> Path:
    """Place a real test-data file where a download would have put it."""
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source_dir / model.filename, directory / model.filename))


class _Counter(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        name = self.path.lstrip("/")
        if name not in self.server.files:
            self.send_error(404, "Not Found")
            return
        data = self.server.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def server(models, monkeypatch):
    """Serves the real test-data files on 127.0.0.1, counting requests."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    httpd.daemon_threads = True
    httpd.files = {
        m.filename: (models / m.filename).read_bytes() for m in (SMALL, LABELS)
    }
    httpd.requests = []
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    monkeypatch.setenv(
        store.MODEL_URL_ENV, f"http://127.0.0.1:{httpd.server_address[1]}"
    )
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


# The registry


def test_pins_match_the_real_files(models):
    for model in store.KNOWN_MODELS.values():
        path = models / model.filename
        assert path.stat().st_size == model.size, model.name
        assert store.file_sha256(path) == model.sha256, model.name
        assert store.is_verified(path, model)


def _interpreter_module():
    """Whichever TFLite runtime this environment has."""
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    pytest.skip("no TFLite runtime installed to read the models' input shapes")


def test_input_sizes_match_the_real_models(models):
    interpreter_module = _interpreter_module()
    for model in store.KNOWN_MODELS.values():
        if model.is_labels:
            continue
        path = str(models / model.filename)
        interpreter = interpreter_module.Interpreter(model_path=path)
        _, height, width, _ = interpreter.get_input_details()[0]["shape"]
        assert model.input_size == (width, height), model.name


def test_registry_shape():
    assert store.DEFAULT_MODEL == "mobilenet_v2_1.0_224_quant"
    assert [m.name for m in store.KNOWN_MODELS.values() if m.needs_edgetpu] == [
        "mobilenet_v1_0.25_128_quant_edgetpu"
    ]
    for model in store.KNOWN_MODELS.values():
        assert re.fullmatch(r"[0-9a-f]{64}", model.sha256)
        assert model.labels is None or store.KNOWN_MODELS[model.labels].is_labels
        assert model.is_labels == (model.labels is None)


def test_urls_follow_the_base():
    assert store.model_url(SMALL, "https://mirror.example/m") == (
        "https://mirror.example/m/mobilenet_v1_0.25_128_quant.tflite"
    )


def test_default_url_is_the_coral_test_data(monkeypatch):
    monkeypatch.delenv(store.MODEL_URL_ENV)

    assert store.model_url(DEFAULT) == (
        "https://github.com/google-coral/test_data/raw/master/"
        "mobilenet_v2_1.0_224_quant.tflite"
    )


def test_get_known_by_name_and_file_name():
    assert store.get_known("imagenet_labels") is LABELS
    assert store.get_known("mobilenet_v1_0.25_128_quant.tflite") is SMALL

    with pytest.raises(ModelError, match="unknown model or label file 'resnet50'"):
        store.get_known("resnet50")


# The model folder


def test_model_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(store.MODEL_DIR_ENV, str(tmp_path / "chosen"))

    assert store.model_dir() == tmp_path / "chosen"


def test_model_dir_system_folder_when_it_can_be_created(tmp_path, monkeypatch):
    monkeypatch.delenv(store.MODEL_DIR_ENV)
    system = tmp_path / "var" / "lib" / "pi-classifier" / "models"
    monkeypatch.setattr(store, "SYSTEM_MODEL_DIR", system)

    assert store.model_dir() == system
    assert not system.exists()


def test_model_dir_system_folder_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.delenv(store.MODEL_DIR_ENV)
    system = tmp_path / "system"
    system.mkdir()
    monkeypatch.setattr(store, "SYSTEM_MODEL_DIR", system)

    assert store.model_dir() == system


def test_model_dir_user_cache_when_system_folder_is_impossible(tmp_path, monkeypatch):
    monkeypatch.delenv(store.MODEL_DIR_ENV)

    assert store.model_dir() == tmp_path / "xdg" / "pi-classifier" / "models"


def test_model_dir_home_cache_without_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv(store.MODEL_DIR_ENV)
    monkeypatch.delenv("XDG_CACHE_HOME")

    home_cache = tmp_path / "home" / ".cache"
    assert store.model_dir() == home_cache / "pi-classifier" / "models"


# resolve_model


def test_path_is_used_as_is(models):
    path = models / SMALL.filename

    assert store.resolve_model(str(path)) == path


def test_path_to_any_tflite_file_is_used_as_is(models):
    path = models / "invalid_model_invoking_error.tflite"

    assert store.resolve_model(str(path), allow_fetch=False) == path


def test_missing_path_is_a_model_error(tmp_path):
    missing = tmp_path / "nope" / "model.tflite"

    with pytest.raises(ModelError, match="does not exist") as caught:
        store.resolve_model(str(missing))

    assert str(missing) in str(caught.value)


def test_folder_given_as_model_path(tmp_path):
    with pytest.raises(ModelError, match="is a folder"):
        store.resolve_model(str(tmp_path) + os.sep)


def test_known_name_found_in_model_dir_without_network(models, env_dir):
    cached = put(models, DEFAULT, env_dir)

    assert store.resolve_model(DEFAULT.name) == cached


def test_known_file_name_resolves_like_its_name(models, env_dir):
    cached = put(models, SMALL, env_dir)

    assert store.resolve_model(SMALL.filename) == cached


def test_copy_in_user_cache_is_found_when_system_folder_is_preferred(
    models, tmp_path, monkeypatch
):
    monkeypatch.delenv(store.MODEL_DIR_ENV)
    system = tmp_path / "system"
    system.mkdir()
    monkeypatch.setattr(store, "SYSTEM_MODEL_DIR", system)
    cached = put(models, SMALL, tmp_path / "xdg" / "pi-classifier" / "models")

    assert store.resolve_model(SMALL.name, allow_fetch=False) == cached


def test_not_cached_and_no_fetch_says_how_to_get_it(env_dir, dead_url):
    with pytest.raises(ModelError) as caught:
        store.resolve_model(DEFAULT.name, allow_fetch=False)

    message = str(caught.value)
    assert str(env_dir / DEFAULT.filename) in message
    assert dead_url + DEFAULT.filename in message
    assert f"pi-classifier fetch-model {DEFAULT.name}" in message


def test_damaged_copy_and_no_fetch(env_dir):
    env_dir.mkdir()
    (env_dir / SMALL.filename).write_bytes(b"truncated")

    with pytest.raises(ModelError, match="does not match its pinned SHA-256"):
        store.resolve_model(SMALL.name, allow_fetch=False)


def test_not_cached_is_fetched_when_allowed(server, env_dir, models):
    calls = []

    path = store.resolve_model(SMALL.name, progress=lambda d, t: calls.append((d, t)))

    assert path == env_dir / SMALL.filename
    assert path.read_bytes() == (models / SMALL.filename).read_bytes()
    assert calls[-1] == (SMALL.size, SMALL.size)
    assert server.requests == [f"/{SMALL.filename}"]


def test_damaged_copy_is_fetched_again_when_allowed(server, env_dir):
    env_dir.mkdir()
    (env_dir / SMALL.filename).write_bytes(b"truncated")

    path = store.resolve_model(SMALL.name)

    assert store.is_verified(path, SMALL)


def test_not_cached_and_server_unreachable(env_dir, dead_url):
    with pytest.raises(FetchError, match="cannot reach") as caught:
        store.resolve_model(SMALL.name)

    assert str(env_dir / SMALL.filename) in str(caught.value)
    assert dead_url + SMALL.filename in str(caught.value)
    assert not (env_dir / SMALL.filename).exists()


def test_unknown_name_lists_known_names_and_suggests_one():
    with pytest.raises(ModelError) as caught:
        store.resolve_model("mobilenet_v1_0.5_160")

    message = str(caught.value)
    assert "did you mean 'mobilenet_v1_0.5_160_quant'?" in message
    for model in store.KNOWN_MODELS.values():
        assert (model.name in message) != model.is_labels


def test_unknown_name_without_close_match():
    with pytest.raises(ModelError) as caught:
        store.resolve_model("zz")

    assert "did you mean" not in str(caught.value)
    assert DEFAULT.name in str(caught.value)


def test_label_file_is_not_a_model():
    with pytest.raises(ModelError, match="is a label file"):
        store.resolve_model("imagenet_labels")


def test_empty_model_setting():
    with pytest.raises(ModelError, match="model is empty"):
        store.resolve_model("  ")


# resolve_labels


def test_explicit_label_path(models, tmp_path):
    path = models / LABELS.filename

    assert store.resolve_labels(str(path), tmp_path / "x.tflite") == path


def test_explicit_label_path_missing(tmp_path):
    with pytest.raises(LabelsError, match="does not exist"):
        store.resolve_labels(str(tmp_path / "labels.txt"), tmp_path / "x.tflite")


def test_explicit_known_label_name(models, env_dir, tmp_path):
    cached = put(models, LABELS, env_dir)

    assert store.resolve_labels("imagenet_labels", tmp_path / "x.tflite") == cached


def test_known_model_gets_its_label_file(models, env_dir):
    model = put(models, SMALL, env_dir)
    labels = put(models, LABELS, env_dir)

    assert store.resolve_labels(None, model) == labels


def test_known_model_label_file_is_fetched(server, models, env_dir):
    model = put(models, SMALL, env_dir)

    labels = store.resolve_labels(None, model)

    assert labels == env_dir / LABELS.filename
    assert store.is_verified(labels, LABELS)
    assert server.requests == [f"/{LABELS.filename}"]


def test_known_model_label_file_not_cached_and_no_fetch(models, env_dir, dead_url):
    model = put(models, SMALL, env_dir)

    with pytest.raises(LabelsError) as caught:
        store.resolve_labels(None, model, allow_fetch=False)

    assert dead_url + LABELS.filename in str(caught.value)
    assert str(env_dir / LABELS.filename) in str(caught.value)


@pytest.mark.parametrize("name", ["labels.txt", "imagenet_labels.txt"])
def test_label_file_beside_an_unknown_model(tmp_path, name):
    model = tmp_path / "mine" / "custom.tflite"
    model.parent.mkdir()
    model.write_bytes(b"model")
    beside = model.parent / name
    beside.write_text("background\ncat\n")

    assert store.resolve_labels(None, model) == beside


def test_no_label_file_anywhere(tmp_path):
    model = tmp_path / "custom.tflite"
    model.write_bytes(b"model")

    with pytest.raises(LabelsError, match="set labels:"):
        store.resolve_labels(None, model)


# list_models


def test_list_models_reports_cached_missing_and_damaged(models, env_dir):
    put(models, SMALL, env_dir)
    (env_dir / DEFAULT.filename).write_bytes(b"half a model")

    infos = {info.name: info for info in store.list_models()}

    names = [m.name for m in store.KNOWN_MODELS.values() if not m.is_labels]
    assert list(infos) == names
    small = infos[SMALL.name]
    assert (small.cached, small.damaged) == (True, False)
    assert small.size_bytes == (models / SMALL.filename).stat().st_size
    assert small.path == env_dir / SMALL.filename
    assert small.input_size == (128, 128)
    default = infos[DEFAULT.name]
    assert (default.cached, default.damaged, default.default) == (False, True, True)
    assert default.size_bytes == len(b"half a model")
    other = infos["mobilenet_v1_0.5_160_quant"]
    assert (other.cached, other.damaged, other.size_bytes) == (False, False, None)
    assert other.path == env_dir / other.filename
    assert [i.name for i in infos.values() if i.default] == [DEFAULT.name]
    assert infos["mobilenet_v1_0.25_128_quant_edgetpu"].needs_edgetpu


def test_list_models_with_labels(models, env_dir):
    put(models, LABELS, env_dir)

    infos = {info.name: info for info in store.list_models(include_labels=True)}

    labels = infos["imagenet_labels"]
    assert (labels.kind, labels.input_size, labels.cached) == ("labels", None, True)
    assert labels.size_bytes == LABELS.size
