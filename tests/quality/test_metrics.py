"""The field's metrics: hand-computed values, scikit-image, and the official recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from service.quality.metrics import (
    Scores,
    mean_scores,
    psnr,
    psnr_mu,
    score,
    ssim,
)


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A linear label in [0, 1] with texture and a noisy prediction of it."""
    rng = np.random.default_rng(3)
    label = (rng.random((40, 56, 3)) ** 3).astype(np.float32)
    prediction = np.clip(label + rng.normal(0, 0.02, label.shape), 0, 1).astype(np.float32)
    return prediction, label


def test_psnr_of_a_uniform_error_of_one_tenth_is_20_db() -> None:
    label = np.full((4, 4, 3), 0.5)
    assert psnr(label + 0.1, label) == pytest.approx(20.0)
    assert psnr(label, label) == math.inf


def test_psnr_mu_is_psnr_of_the_mu_law_images() -> None:
    prediction, label = np.array([0.0, 1.0, 0.01]), np.array([0.0, 1.0, 0.02])
    mu = [0.0, 1.0, math.log(51) / math.log(5001)]
    mu_label = [0.0, 1.0, math.log(101) / math.log(5001)]
    expected = 10 * math.log10(1 / np.mean((np.array(mu) - np.array(mu_label)) ** 2))
    assert psnr_mu(prediction, label) == pytest.approx(expected, rel=1e-12)
    assert psnr_mu(label, label) == math.inf


def test_psnr_mu_is_the_score_of_the_same_name(pair) -> None:
    prediction, label = pair
    assert psnr_mu(prediction, label) == score(prediction, label).psnr_mu


def test_psnr_mu_counts_negatives_as_black_instead_of_a_nan() -> None:
    assert psnr_mu(np.array([-0.5, 0.25]), np.array([0.0, 0.25])) == math.inf


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 50.0)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 50 + c1) / (100**2 + 50**2 + c1)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-12)
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_is_the_mean_over_channels() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((24, 24, 3)) * 255
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    per_channel = [ssim(a[..., c], b[..., c]) for c in range(3)]
    assert ssim(a, b) == pytest.approx(np.mean(per_channel), rel=1e-12)


def test_psnr_matches_scikit_image(pair) -> None:
    prediction, label = pair
    ours = psnr(prediction, label)
    theirs = peak_signal_noise_ratio(label, prediction, data_range=1.0)
    assert ours == pytest.approx(theirs, abs=1e-4)


def test_ssim_matches_scikit_image_with_the_papers_parameters(pair) -> None:
    prediction, label = (np.clip(x.astype(np.float64) * 255, 0, 255) for x in pair)
    theirs = structural_similarity(
        label,
        prediction,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=2,
    )
    assert ssim(prediction, label) == pytest.approx(theirs, abs=1e-10)


def test_score_follows_the_official_recipe(pair) -> None:
    prediction, label = pair
    scores = score(prediction, label)

    def mu(x: np.ndarray) -> np.ndarray:
        return np.log(1 + 5000 * x.astype(np.float64)) / math.log(1 + 5000)

    def official_ssim(a: np.ndarray, b: np.ndarray) -> float:
        return structural_similarity(
            np.clip(a * 255, 0, 255),
            np.clip(b * 255, 0, 255),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=2,
        )

    assert scores.psnr_l == pytest.approx(peak_signal_noise_ratio(label, prediction, data_range=1))
    assert scores.psnr_mu == pytest.approx(
        peak_signal_noise_ratio(mu(label), mu(prediction), data_range=1.0), abs=1e-6
    )
    assert scores.ssim_l == pytest.approx(official_ssim(prediction, label), abs=1e-8)
    assert scores.ssim_mu == pytest.approx(official_ssim(mu(prediction), mu(label)), abs=1e-8)


def test_ssim_clips_values_above_one_but_psnr_does_not() -> None:
    label = np.full((16, 16, 3), 0.5)
    hot = label.copy()
    hot[4:8, 4:8] = 3.0
    clipped = label.copy()
    clipped[4:8, 4:8] = 1.0
    assert score(hot, label).ssim_l == score(clipped, label).ssim_l
    assert score(hot, label).psnr_l < score(clipped, label).psnr_l


def test_metrics_refuse_mismatched_or_tiny_images() -> None:
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 40, 3)), np.zeros((10, 40, 3)))


def test_mean_scores_average_each_metric_over_scenes() -> None:
    mean = mean_scores([Scores(40, 30, 0.9, 0.8), Scores(42, 34, 0.95, 0.9)])
    assert mean == Scores(41, 32, pytest.approx(0.925), pytest.approx(0.85))
    with pytest.raises(ValueError):
        mean_scores([])
