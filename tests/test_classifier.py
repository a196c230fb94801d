import shutil

import cv2
import numpy as np
import pytest
from helpers import RUNTIME

from pi_classifier.classifier import Classifier
from pi_classifier.errors import (
    DelegateError,
    LabelsError,
    ModelError,
    RuntimeUnavailableError,
)
from pi_classifier.preprocess import InputWriter, center_crop
from pi_classifier.runtime import load_runtime

V2 = "mobilenet_v2_1.0_224_quant.tflite"
CPU_MODELS = [
    "mobilenet_v2_1.0_224_quant.tflite",
    "mobilenet_v1_0.25_128_quant.tflite",
    "mobilenet_v1_0.5_160_quant.tflite",
    "mobilenet_v1_0.75_192_quant.tflite",
    "tf2_mobilenet_v2_1.0_224_ptq.tflite",
]


@pytest.fixture(scope="module")
def v2(models):
    return Classifier(models / V2, models / "imagenet_labels.txt", runtime=RUNTIME,
                      threads=2, aliases={"Granny Smith": "apple"})


def top(classifier, path, **options):
    return classifier.classify(cv2.imread(str(path)), **options)[0]


def test_cat_is_an_egyptian_cat(v2, images):
    best = top(v2, images / "cat.bmp")
    assert (best.index, best.label) == (286, "Egyptian cat")
    assert best.score > 0.7


def test_banana_and_granny_smith(v2, images):
    assert top(v2, images / "banana_0.jpg").label == "banana"
    granny = top(v2, images / "granny_smith_0.jpg")
    assert granny.label == "Granny Smith"
    assert granny.name == "apple"


def test_top_k_and_threshold(v2, images):
    picture = cv2.imread(str(images / "owl.jpg"))
    assert len(v2.classify(picture, top_k=5)) == 5
    results = v2.classify(picture, top_k=5, threshold=0.2)
    assert results and all(r.score >= 0.2 for r in results)
    scores = [r.score for r in v2.classify(picture, top_k=5)]
    assert scores == sorted(scores, reverse=True)


def test_rgb_and_bgr_input_agree(v2, images):
    picture = cv2.imread(str(images / "cat.bmp"))
    bgr = v2.probabilities(picture, "bgr")
    rgb = v2.probabilities(cv2.cvtColor(picture, cv2.COLOR_BGR2RGB), "rgb")
    assert np.array_equal(bgr, rgb)


def test_timing_is_recorded(v2, images):
    top(v2, images / "cat.bmp")
    assert v2.timing.invoke_ms > 0
    assert v2.timing.total_ms >= v2.timing.invoke_ms


@pytest.mark.parametrize("name", CPU_MODELS)
def test_each_shipped_model_classifies(models, images, name):
    classifier = Classifier(models / name, models / "imagenet_labels.txt",
                            runtime=RUNTIME, threads=1)
    assert top(classifier, images / "granny_smith_0.jpg").label == "Granny Smith"


def test_edgetpu_model_without_delegate_is_explained(models):
    with pytest.raises(ModelError, match="compiled for the Coral Edge TPU"):
        Classifier(models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite",
                   models / "imagenet_labels.txt", runtime=RUNTIME)


def test_missing_edgetpu_library_is_explained(models):
    with pytest.raises(DelegateError, match="libedgetpu"):
        Classifier(models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite",
                   models / "imagenet_labels.txt", runtime=RUNTIME,
                   delegate="edgetpu")


def test_invoking_error_model(models):
    with pytest.raises(ModelError, match="fake-op-double"):
        Classifier(models / "invalid_model_invoking_error.tflite",
                   models / "imagenet_labels.txt", runtime=RUNTIME)


def test_truncated_model(models, tmp_path):
    data = (models / V2).read_bytes()
    broken = tmp_path / "truncated.tflite"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match=r"truncated\.tflite"):
        Classifier(broken, models / "imagenet_labels.txt", runtime=RUNTIME)


def test_empty_model(models, tmp_path):
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="is empty"):
        Classifier(empty, models / "imagenet_labels.txt", runtime=RUNTIME)


def test_not_a_model(models, tmp_path):
    text = tmp_path / "notes.tflite"
    text.write_text("this is not a model at all\n")
    with pytest.raises(ModelError, match="not a TFLite model"):
        Classifier(text, models / "imagenet_labels.txt", runtime=RUNTIME)


def test_missing_model(models, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Classifier(tmp_path / "none.tflite", models / "imagenet_labels.txt",
                   runtime=RUNTIME)


def test_label_file_of_wrong_length(models, tmp_path):
    labels = tmp_path / "short.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(10)))
    with pytest.raises(LabelsError, match="has 10 labels but the model has 1001"):
        Classifier(models / V2, labels, runtime=RUNTIME)


def test_label_file_without_background_row(models, tmp_path):
    lines = (models / "imagenet_labels.txt").read_text().splitlines()[1:]
    labels = tmp_path / "thousand.txt"
    labels.write_text("\n".join(lines))
    classifier = Classifier(models / V2, labels, runtime=RUNTIME, threads=1)
    assert classifier.labels.name(286) == "Egyptian cat"


def test_unknown_runtime_and_missing_runtime():
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime"):
        load_runtime("onnx")
    with pytest.raises(RuntimeUnavailableError, match="pip install tensorflow"):
        load_runtime("tensorflow")


def test_old_tflite_runtime_with_numpy_2_is_refused(monkeypatch):
    from pi_classifier import runtime

    monkeypatch.setattr(runtime, "_package_version", lambda name: "2.14.0")
    monkeypatch.setattr(runtime.np, "__version__", "2.1.0")
    with pytest.raises(RuntimeUnavailableError, match="needs numpy < 2"):
        load_runtime("tflite-runtime")


def test_center_crop_is_a_view_of_the_middle():
    picture = np.arange(4 * 8).reshape(4, 8)
    cropped = center_crop(picture, 1, 1)
    assert cropped.shape == (4, 4)
    assert np.shares_memory(cropped, picture)
    assert cropped[0, 0] == picture[0, 2]


def test_input_writer_for_each_tensor_type():
    picture = np.zeros((2, 2, 3), np.uint8)
    picture[..., 0] = 255  # blue in BGR
    uint8 = np.zeros((1, 2, 2, 3), np.uint8)
    InputWriter(2, 2, np.uint8, (1 / 128, 128)).write(picture, uint8)
    assert uint8[0, 0, 0].tolist() == [0, 0, 255]
    int8 = np.zeros((1, 2, 2, 3), np.int8)
    InputWriter(2, 2, np.int8, (1 / 128, 0)).write(picture, int8)
    assert int8[0, 0, 0].tolist() == [-128, -128, 127]
    floats = np.zeros((1, 2, 2, 3), np.float32)
    InputWriter(2, 2, np.float32, (0.0, 0)).write(picture, floats)
    assert floats[0, 0, 0].tolist() == pytest.approx([-1.0, -1.0, 1.0])


def test_copy_of_shipped_model_loads_from_any_folder(models, tmp_path):
    copy = tmp_path / "my model.tflite"
    shutil.copyfile(models / "mobilenet_v1_0.25_128_quant.tflite", copy)
    classifier = Classifier(copy, models / "imagenet_labels.txt", runtime=RUNTIME)
    assert classifier.input_size == (128, 128)
