"""Metric functions against hand-computed values on constructed images and catalogs."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from tfdeblend.evaluate import metrics
from tfdeblend.evaluate.match import match_batch, match_positions


def gaussian(size=41, sigma=3.0, x0=20.0, y0=20.0, flux=1.0, bands=1):
    yy, xx = np.mgrid[0:size, 0:size]
    g = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    g = flux * g / g.sum()
    return np.repeat(g[..., None], bands, axis=-1)


def test_psnr_of_known_mse():
    truth = np.zeros((8, 8, 2))
    truth[3, 3, 0] = 10.0  # max(truth) = 10
    pred = truth + 0.5  # MSE = 0.25 everywhere
    expected = 10 * np.log10(100 / 0.25)
    assert metrics.psnr(pred, truth) == pytest.approx(expected)
    # batched, and a perfect component is infinite
    both = metrics.psnr(np.stack([pred, truth]), np.stack([truth, truth]))
    assert both.shape == (2,)
    assert both[0] == pytest.approx(expected) and np.isinf(both[1])


def test_psnr_btk_normalizes_each_image_by_its_max():
    truth = gaussian(bands=2, flux=100.0)
    # a scaled copy has the wrong flux but the same normalized image: BTK's PSNR is infinite,
    # the paper's is finite
    assert np.isinf(metrics.psnr_btk(2 * truth, truth))
    assert np.isfinite(metrics.psnr(2 * truth, truth))
    # hand value: per band MSE of normalized images
    pred = truth.copy()
    pred[0, 0, :] += truth.max()  # a bright corner pixel: changes the normalization too
    t = truth[..., 0] / truth[..., 0].max()
    p = pred[..., 0] / pred[..., 0].max()
    expected = 10 * np.log10(1 / np.mean((p - t) ** 2))
    assert metrics.psnr_btk(pred, truth) == pytest.approx(expected)


def test_ssim_identical_is_one_and_matches_skimage():
    truth = gaussian(bands=3, flux=1000.0)
    assert metrics.ssim(truth, truth) == pytest.approx(1.0)
    assert metrics.ssim_btk(truth, truth) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    pred = truth + rng.normal(0, truth.max() * 0.05, truth.shape)
    per_band = [
        structural_similarity(pred[..., c], truth[..., c], data_range=np.ptp(truth[..., c]))
        for c in range(3)
    ]
    assert metrics.ssim(pred, truth) == pytest.approx(np.mean(per_band))
    assert metrics.ssim(pred, truth) < 0.99


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4, 1)), np.zeros((4, 4, 2)))


def test_flux_bias_scatter_outliers_of_known_arrays():
    true = np.full(9, 100.0)
    measured = np.array([90, 95, 98, 100, 100, 101, 102, 105, 200.0])
    s = metrics.flux_stats(measured, true)
    # relative errors: -0.10 -0.05 -0.02 0 0 0.01 0.02 0.05 1.0
    assert s["bias"] == pytest.approx(0.0)
    # |err - 0| sorted: 0 0 .01 .02 .02 .05 .05 .10 1.0 -> median .02
    assert s["scatter"] == pytest.approx(1.4826 * 0.02)
    # 3 sigma = 0.0890: outliers are -0.10, 1.0 ; |err| > 0.1: only 1.0
    assert s["outlier_fraction"] == pytest.approx(2 / 9)
    assert s["catastrophic_fraction"] == pytest.approx(1 / 9)
    assert s["n"] == 9
    assert metrics.relative_error(np.array([1.0]), np.array([0.0]))[0] != 0  # nan, not inf
    assert metrics.robust_stats(np.array([np.nan]))["n"] == 0


def test_linear_fit_and_band():
    x = np.arange(10.0)
    y = 2 * x + 1
    fit = metrics.linear_fit(x, y)
    assert fit["slope"] == pytest.approx(2) and fit["intercept"] == pytest.approx(1)
    y_hat, lo, hi = metrics.fit_band(fit, np.array([0.0, 4.5]))
    assert np.allclose(y_hat, [1, 10]) and np.allclose(lo, y_hat) and np.allclose(hi, y_hat)
    # noisy line: band is widest far from the mean and contains the true line at the mean
    rng = np.random.default_rng(1)
    y2 = y + rng.normal(0, 1, x.size)
    fit2 = metrics.linear_fit(x, y2)
    y_hat, lo, hi = metrics.fit_band(fit2, np.array([0.0, fit2["x_mean"], 9.0]))
    width = hi - lo
    assert width[1] < width[0] and width[1] < width[2]
    from scipy import stats

    t = stats.t.ppf(0.975, 8)
    assert width[1] / 2 == pytest.approx(t * fit2["sigma"] / np.sqrt(10))


def test_shape_moments():
    m = metrics.shape_moments(np.array([5.0]), np.array([2.0]), np.array([2.0]))
    assert m["mu20_minus_mu02"][0] == 3.0
    assert m["mu2_abs"][0] == pytest.approx(5.0)  # sqrt(3^2 + 4^2)


def test_quality_fractions():
    q = metrics.quality_fractions(np.array([2, 2, 2, 1, 0]))
    assert q == {"high": 0.6, "medium": 0.2, "low": 0.2, "n": 5}


def test_noise_limited_error_of_gaussian_matches_analytic():
    sigma_px, sky_std = 3.0, 10.0
    img = gaussian(size=61, sigma=sigma_px, x0=30, y0=30, flux=5000.0, bands=2)
    got = metrics.noise_limited_flux_error(img, np.array([sky_std**2] * 2), include_poisson=False)
    # sum p^2 = 1 / (4 pi sigma^2) for a well-sampled Gaussian
    analytic = sky_std * np.sqrt(4 * np.pi) * sigma_px
    assert got.shape == (2,)
    assert got == pytest.approx([analytic, analytic], rel=1e-3)
    # Poisson noise of the source only makes it worse; the bright limit tends to sqrt(flux)
    with_poisson = metrics.noise_limited_flux_error(img, np.array([100.0, 1e-9]))
    assert with_poisson[0] > got[0]
    assert with_poisson[1] == pytest.approx(np.sqrt(5000.0), rel=1e-3)


def test_sky_noise_std_recovers_known_sigma():
    rng = np.random.default_rng(2)
    noiseless = np.repeat(gaussian(flux=1e5, bands=1)[None], 20, axis=0)
    noiseless = np.concatenate([noiseless, noiseless], axis=-1)
    noisy = noiseless + rng.normal(0, 1, noiseless.shape) * np.array([5.0, 20.0])
    assert metrics.sky_noise_std(noisy, noiseless) == pytest.approx([5.0, 20.0], rel=0.03)
    noisy[3, 10, 10, 0] = np.nan  # a missing pixel is left out, not the whole band's noise
    assert metrics.sky_noise_std(noisy, noiseless) == pytest.approx([5.0, 20.0], rel=0.03)
    noisy[..., 1] = np.nan  # a band with no data at all: NaN, the other band measured
    got = metrics.sky_noise_std(noisy, noiseless)
    assert got[0] == pytest.approx(5.0, rel=0.03) and np.isnan(got[1])


def test_match_positions_hungarian_and_max_sep():
    true_xy = np.array([[10.0, 10.0], [14.0, 10.0], [np.nan, np.nan]])
    # greedy nearest would give pred 0 to true 1 (dist 1) and leave true 0 with dist 6;
    # Hungarian minimizes the total: true0->pred1 (dist 2), true1->pred0 (dist 1)
    pred_xy = np.array([[13.0, 10.0], [8.0, 10.0]])
    assert match_positions(true_xy, pred_xy).tolist() == [1, 0, -1]
    # beyond max_sep: no match
    assert match_positions(true_xy, pred_xy + 20).tolist() == [-1, -1, -1]
    assert match_positions(true_xy, np.zeros((0, 2))).tolist() == [-1, -1, -1]


def test_detection_stats_on_constructed_catalogs():
    true_x = np.array([[10.0, 30.0], [10.0, np.nan], [10.0, 30.0]])
    true_y = np.full((3, 2), 10.0)
    pred_x = np.array([[11.0, 29.0, np.nan], [10.0, 50.0, np.nan], [10.0, np.nan, np.nan]])
    pred_y = np.full((3, 3), 10.0)
    match = match_batch(true_x, true_y, pred_x, pred_y)
    assert match.tolist() == [[0, 1], [0, -1], [0, -1]]
    s = metrics.detection_stats(match, n_true=[2, 1, 2], n_pred=[2, 2, 1])
    assert s["n_matched"] == 4
    assert s["recall"] == pytest.approx(4 / 5)
    assert s["precision"] == pytest.approx(4 / 5)
    assert s["exact_count_fraction"] == pytest.approx(1 / 3)


def test_summarize_ignores_nan():
    s = metrics.summarize(np.array([1.0, 3.0, np.nan, 8.0]))
    assert s == {"mean": 4.0, "median": 3.0, "n": 3}
