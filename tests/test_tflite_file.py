import pytest

from pi_classifier.tflite_file import find_damage

MODELS = [
    "mobilenet_v2_1.0_224_quant.tflite",
    "mobilenet_v1_0.25_128_quant.tflite",
    "mobilenet_v1_0.5_160_quant.tflite",
    "mobilenet_v1_0.75_192_quant.tflite",
    "tf2_mobilenet_v2_1.0_224_ptq.tflite",
    "mobilenet_v1_0.25_128_quant_edgetpu.tflite",
    "invalid_model_invoking_error.tflite",
]


@pytest.mark.parametrize("name", MODELS)
def test_real_models_are_whole(models, name):
    assert find_damage((models / name).read_bytes()) is None


@pytest.mark.parametrize("share", [0.1, 0.33, 0.5, 0.9, 0.99])
def test_truncated_models_are_found(models, share):
    # The last 21 kB of this file are a zip of its labels appended after the
    # model, which no runtime reads: cuts there are harmless and not found.
    data = (models / MODELS[0]).read_bytes()
    assert find_damage(data[: int(len(data) * share)]) is not None


def test_other_files():
    assert find_damage(b"") == "no TFL3 identifier"
    assert find_damage(b"hello world, not a model") == "no TFL3 identifier"
    assert find_damage(b"\xff\xff\xff\x7fTFL3") is not None
