"""Frame to model input: crop, bin, threshold, cast, and clear rejections."""

from __future__ import annotations

import numpy as np
import pytest

from ptychonn_ophyd.errors import FrameRejected
from ptychonn_ophyd.preprocess import PreprocessConfig, Preprocessor


def test_jetson_crop_and_bin_turns_516_into_128():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 1000, (516, 516)).astype(np.uint16)
    out = Preprocessor(PreprocessConfig(crop=2, bin=4), (128, 128))(frame)
    expected = frame[2:-2, 2:-2].reshape(128, 4, 128, 4).mean(axis=(1, 3))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_threshold_zeroes_counts_below_it():
    frame = np.array([[1, 5], [10, 2]], np.int16)
    out = Preprocessor(PreprocessConfig(threshold=3), (2, 2))(frame)
    np.testing.assert_array_equal(out, [[0, 5], [10, 0]])


def test_asymmetric_crop():
    frame = np.arange(6 * 8).reshape(6, 8).astype(np.int32)
    out = Preprocessor(PreprocessConfig(crop=(1, 1, 2, 2)), (4, 4))(frame)
    np.testing.assert_array_equal(out, frame[1:5, 2:6])


@pytest.mark.parametrize(
    "dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]
)
def test_any_integer_or_float_dtype_is_accepted(dtype):
    frame = np.full((128, 128), 7, dtype)
    out = Preprocessor(PreprocessConfig(), (128, 128))(frame)
    assert out.dtype == np.float32 and np.all(out == 7)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (np.zeros((64, 64), np.int16), "shape"),
        (np.zeros((0, 0), np.int16), "empty"),
        (np.zeros((128, 128), np.complex64), "dtype"),
        (np.zeros((128, 128), bool), "dtype"),
        (np.zeros((2, 128, 128), np.int16), "shape"),
    ],
)
def test_unusable_frames_are_rejected_with_a_reason(frame, reason):
    with pytest.raises(FrameRejected) as err:
        Preprocessor(PreprocessConfig(), (128, 128))(frame)
    assert err.value.reason == reason


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_float_frame_with_nan_or_inf_is_rejected_as_nonfinite(value):
    frame = np.ones((130, 130), np.float32)
    frame[0, 0] = value  # cropped away: the model input stays finite
    Preprocessor(PreprocessConfig(crop=1), (128, 128))(frame)
    frame[64, 64] = value
    with pytest.raises(FrameRejected, match="1 of the model input's 16384 values") as err:
        Preprocessor(PreprocessConfig(crop=1), (128, 128))(frame)
    assert err.value.reason == "nonfinite"


def test_huge_finite_frame_is_not_rejected():
    frame = np.full((128, 128), 3e38, np.float32)  # its sum overflows, its values do not
    assert np.isfinite(Preprocessor(PreprocessConfig(), (128, 128))(frame)).all()


def test_size_rejection_explains_the_mismatch():
    with pytest.raises(FrameRejected, match="a 516x516 frame does not become the model's 128x128"):
        Preprocessor(PreprocessConfig(bin=4), (128, 128))(np.zeros((516, 516), np.int16))


def test_negative_crop_is_a_configuration_error():
    with pytest.raises(ValueError, match="crop must not be negative"):
        PreprocessConfig(crop=-1)


def test_unknown_option_is_a_configuration_error():
    with pytest.raises(ValueError, match="binning"):
        PreprocessConfig(binning=2)
