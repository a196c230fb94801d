import numpy as np
import pytest

from pi_classifier.scores import (
    are_probabilities,
    dequantize,
    quantized_range_is_probability,
    rank,
    softmax,
    to_probabilities,
)


def test_dequantize_uint8_and_int8():
    raw = np.array([0, 128, 255], np.uint8)
    assert dequantize(raw, 0.5, 128).tolist() == [-64.0, 0.0, 63.5]
    signed = np.array([-128, 0, 127], np.int8)
    assert dequantize(signed, 0.25, -128).tolist() == [0.0, 32.0, 63.75]


def test_float_outputs_are_kept():
    values = np.array([0.1, 0.9], np.float32)
    assert dequantize(values, 0.0, 0) is values


def test_softmax_only_when_not_probabilities():
    probabilities = np.array([0.2, 0.7, 0.1], np.float32)
    assert np.array_equal(to_probabilities(probabilities), probabilities)
    logits = np.array([1.0, 3.0, -2.0], np.float32)
    result = to_probabilities(logits)
    assert result.sum() == pytest.approx(1.0)
    assert result.argmax() == 1
    assert not are_probabilities(logits)


def test_known_probabilities_skip_the_sum_check():
    drifted = np.full(1000, 0.000984, np.float32)
    assert np.array_equal(to_probabilities(drifted, known=True), drifted)


def test_softmax_is_stable_for_large_values():
    result = softmax(np.array([1000.0, 1001.0], np.float32))
    assert np.isfinite(result).all()


def test_quantized_softmax_output_is_recognised():
    assert quantized_range_is_probability(1 / 256, 0, np.uint8)
    assert quantized_range_is_probability(1 / 256, -128, np.int8)
    assert not quantized_range_is_probability(0.1, 50, np.uint8)
    assert not quantized_range_is_probability(0.0, 0, np.float32)


def test_rank_orders_limits_and_thresholds():
    scores = np.array([0.1, 0.5, 0.05, 0.3, 0.05], np.float32)
    assert rank(scores, 3) == [
        (1, 0.5), (3, pytest.approx(0.3)), (0, pytest.approx(0.1))
    ]
    assert [i for i, _ in rank(scores, 5, threshold=0.2)] == [1, 3]
    assert [i for i, _ in rank(scores, 10)] == [1, 3, 0, 2, 4]
    assert rank(scores, 0) == []
