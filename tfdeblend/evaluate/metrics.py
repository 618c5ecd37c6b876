"""The paper's metrics and truth-based metrics, on plain numpy arrays.

Images are channels last: one image ``(H, W, C)``, batches ``(..., H, W, C)``; fluxes in the
images' linear unit (electrons for simulated data); positions and moments in pixels and
pixels^2 (see :mod:`tfdeblend.measure`).

Definitions:

- **PSNR (paper)**: ``10 log10(max(truth)^2 / MSE)`` where ``MSE`` is the mean over all pixels
  and bands of ``(component - truth)^2`` and ``max(truth)`` the largest pixel of the true isolated
  galaxy over all bands. In dB; ``inf`` for a perfect component.
- **SSIM (paper)**: skimage ``structural_similarity`` per band with
  ``data_range = max(truth) - min(truth)`` of that band, averaged over the bands.
- **PSNR / SSIM (BTK)**: as ``btk.metrics.utils.psnr`` / ``struct_sim``: each image divided by its
  own maximum, ``data_range = 1``; computed per band and averaged over the bands.
- **Relative flux error**: ``(f_meas - f_true) / f_true`` per band (or band sum).
- **Bias**: median of the relative error; **robust scatter**: ``1.4826 * MAD`` (median absolute
  deviation about the median); **outlier fraction**: fraction with
  ``|err - bias| > 3 * scatter``; **catastrophic fraction**: fraction with ``|err| > 0.1``.
- **Shape moments**: ``mu11`` and ``mu20 - mu02`` (the two components of the second-moment
  ellipticity numerator) and ``|mu2| = sqrt((mu20 - mu02)^2 + (2 mu11)^2)`` (pixels^2).
- **Noise-limited flux error**: for a galaxy with normalized profile ``p`` (``sum p = 1``) and
  pixel variance ``var``, the best unbiased linear flux estimator (the matched filter) has
  ``sigma_f^2 = 1 / sum(p^2 / var)``. ``var`` = sky variance of the band, plus the source's own
  Poisson variance ``f * p`` when its flux ``f`` (electrons) is given.
- **Detection**: components/detections are matched to true galaxies with the Hungarian matcher
  of :mod:`tfdeblend.evaluate.match` (``max_sep`` 5 px). Recall = matched true / all true;
  precision = matched predicted / all predicted; exact-count fraction = fraction of stamps whose
  number of predicted objects equals the true number.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from skimage.metrics import structural_similarity

from tfdeblend.config import MAD_TO_SIGMA, QUALITY_NAMES


def _as_images(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape or pred.ndim < 3:
        raise ValueError(f"images must share a (..., H, W, C) shape: {pred.shape} vs {truth.shape}")
    return pred, truth


def psnr(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Paper PSNR in dB: ``10 log10(max(truth)^2 / MSE)``.

    Args:
        pred: ``(..., H, W, C)`` deblended component.
        truth: ``(..., H, W, C)`` true isolated galaxy (noiseless), same unit.

    Returns:
        ``(...)`` PSNR in dB (``inf`` when the images are equal).
    """
    pred, truth = _as_images(pred, truth)
    mse = ((pred - truth) ** 2).mean(axis=(-3, -2, -1))
    peak = truth.max(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(peak**2 / mse)


def _loop_bands(pred, truth, one):
    """Apply ``one(pred2d, truth2d)`` per image and band, average over bands. -> (...)."""
    lead = pred.shape[:-3]
    flat_p = pred.reshape((-1,) + pred.shape[-3:])
    flat_t = truth.reshape((-1,) + truth.shape[-3:])
    out = np.empty(len(flat_p))
    for i in range(len(flat_p)):
        out[i] = np.mean([one(flat_p[i, ..., c], flat_t[i, ..., c]) for c in range(pred.shape[-1])])
    return out.reshape(lead)


def _ssim_paper(pred2d: np.ndarray, truth2d: np.ndarray) -> float:
    data_range = float(truth2d.max() - truth2d.min())
    if data_range <= 0:
        return float("nan")
    return float(structural_similarity(pred2d, truth2d, data_range=data_range))


def ssim(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Paper SSIM: per band with ``data_range`` = the truth's range, averaged over bands.

    Args:
        pred: ``(..., H, W, C)`` deblended component (H, W >= 7).
        truth: ``(..., H, W, C)`` true isolated galaxy.

    Returns:
        ``(...)`` SSIM in [-1, 1]; ``nan`` where a truth band is constant.
    """
    pred, truth = _as_images(pred, truth)
    return _loop_bands(pred, truth, _ssim_paper)


def _normalize_max(image: np.ndarray) -> np.ndarray:
    peak = image.max()
    return image / peak if peak != 0 else image


def _psnr_btk(pred2d: np.ndarray, truth2d: np.ndarray) -> float:
    mse = np.mean((_normalize_max(pred2d) - _normalize_max(truth2d)) ** 2)
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(1.0 / mse))


def _ssim_btk(pred2d: np.ndarray, truth2d: np.ndarray) -> float:
    return float(
        structural_similarity(_normalize_max(pred2d), _normalize_max(truth2d), data_range=1.0)
    )


def psnr_btk(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """BTK's PSNR: each image divided by its own max, ``data_range`` 1, per band, band mean.

    Args:
        pred: ``(..., H, W, C)``.
        truth: ``(..., H, W, C)``.

    Returns:
        ``(...)`` PSNR in dB.
    """
    pred, truth = _as_images(pred, truth)
    return _loop_bands(pred, truth, _psnr_btk)


def ssim_btk(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """BTK's SSIM: each image divided by its own max, ``data_range`` 1, per band, band mean.

    Args:
        pred: ``(..., H, W, C)``.
        truth: ``(..., H, W, C)``.

    Returns:
        ``(...)`` SSIM.
    """
    pred, truth = _as_images(pred, truth)
    return _loop_bands(pred, truth, _ssim_btk)


def relative_error(measured: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``(measured - true) / true`` elementwise (``nan`` where ``true`` is 0 or not finite)."""
    measured = np.asarray(measured, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(true != 0, (measured - true) / np.where(true != 0, true, 1.0), np.nan)


def robust_stats(errors: np.ndarray) -> dict[str, float]:
    """Bias, robust scatter and outlier fractions of an error sample (non-finite values dropped).

    Args:
        errors: any shape; e.g. relative flux errors.

    Returns:
        Dict with ``n``, ``bias`` (median), ``scatter`` (1.4826 MAD), ``outlier_fraction``
        (``|err - bias| > 3 scatter``), ``catastrophic_fraction`` (``|err| > 0.1``), ``mean``.
    """
    err = np.asarray(errors, dtype=np.float64).ravel()
    err = err[np.isfinite(err)]
    if err.size == 0:
        nan = float("nan")
        return {"n": 0, "bias": nan, "scatter": nan, "outlier_fraction": nan,
                "catastrophic_fraction": nan, "mean": nan}
    bias = float(np.median(err))
    scatter = float(MAD_TO_SIGMA * np.median(np.abs(err - bias)))
    return {
        "n": int(err.size),
        "bias": bias,
        "scatter": scatter,
        "outlier_fraction": float(np.mean(np.abs(err - bias) > 3.0 * scatter)),
        "catastrophic_fraction": float(np.mean(np.abs(err) > 0.1)),
        "mean": float(np.mean(err)),
    }


def flux_stats(measured: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """:func:`robust_stats` of the relative flux error ``(measured - true) / true``."""
    return robust_stats(relative_error(measured, true))


def linear_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least-squares line ``y = slope * x + intercept`` (non-finite pairs dropped).

    Returns:
        Dict with ``slope``, ``intercept``, ``n``, ``x_mean``, ``sxx`` (sum of squared x
        deviations), ``sigma`` (residual standard deviation, n - 2 degrees of freedom) and ``r``
        (Pearson correlation); enough for :func:`fit_band`.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0:
        nan = float("nan")
        return {"slope": nan, "intercept": nan, "n": n, "x_mean": nan, "sxx": nan,
                "sigma": nan, "r": nan}
    x_mean = float(x.mean())
    sxx = float(((x - x_mean) ** 2).sum())
    slope = float(((x - x_mean) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * x_mean)
    resid = y - (slope * x + intercept)
    sigma = float(np.sqrt((resid**2).sum() / (n - 2)))
    r = float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 0 else float("nan")
    return {"slope": slope, "intercept": intercept, "n": n, "x_mean": x_mean, "sxx": sxx,
            "sigma": sigma, "r": r}


def fit_band(fit: dict[str, float], x: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, ...]:
    """Fitted line and its confidence band (of the mean) at ``x``.

    ``y_hat +- t_{(1+level)/2, n-2} * sigma * sqrt(1/n + (x - x_mean)^2 / sxx)``.

    Returns:
        ``(y_hat, lower, upper)`` arrays shaped like ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    y_hat = fit["slope"] * x + fit["intercept"]
    n = fit["n"]
    if n < 3:
        return y_hat, y_hat * np.nan, y_hat * np.nan
    t = stats.t.ppf(0.5 + level / 2.0, n - 2)
    half = t * fit["sigma"] * np.sqrt(1.0 / n + (x - fit["x_mean"]) ** 2 / fit["sxx"])
    return y_hat, y_hat - half, y_hat + half


def shape_moments(mu20: np.ndarray, mu02: np.ndarray, mu11: np.ndarray) -> dict[str, np.ndarray]:
    """``mu11``, ``mu20 - mu02`` and ``|mu2| = sqrt((mu20 - mu02)^2 + (2 mu11)^2)`` (pixels^2)."""
    mu20 = np.asarray(mu20, dtype=np.float64)
    mu02 = np.asarray(mu02, dtype=np.float64)
    mu11 = np.asarray(mu11, dtype=np.float64)
    diff = mu20 - mu02
    return {"mu11": mu11, "mu20_minus_mu02": diff, "mu2_abs": np.sqrt(diff**2 + (2.0 * mu11) ** 2)}


def quality_fractions(quality: np.ndarray) -> dict[str, float]:
    """Fractions of stamps labelled high (2), medium (1) and low (0) quality."""
    quality = np.asarray(quality).ravel()
    n = max(quality.size, 1)
    fractions = {name: float(np.sum(quality == q) / n) for q, name in QUALITY_NAMES.items()}
    return {**fractions, "n": int(quality.size)}


def detection_stats(match: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray) -> dict[str, float]:
    """Recall, precision and exact-count fraction after matching.

    Args:
        match: ``(N, S)`` predicted index per true galaxy, ``-1`` unmatched (only the first
            ``n_true[i]`` entries of row ``i`` are real galaxies).
        n_true: ``(N,)`` number of true galaxies per stamp.
        n_pred: ``(N,)`` number of predicted objects per stamp.

    Returns:
        Dict with ``recall``, ``precision``, ``exact_count_fraction``, ``n_true``, ``n_pred``,
        ``n_matched``.
    """
    match = np.asarray(match)
    n_true = np.asarray(n_true, dtype=np.int64)
    n_pred = np.asarray(n_pred, dtype=np.int64)
    real = np.arange(match.shape[1])[None, :] < n_true[:, None]
    matched = int(np.sum((match >= 0) & real))
    total_true = int(n_true.sum())
    total_pred = int(n_pred.sum())
    return {
        "recall": matched / total_true if total_true else float("nan"),
        "precision": matched / total_pred if total_pred else float("nan"),
        "exact_count_fraction": float(np.mean(n_true == n_pred)) if n_true.size else float("nan"),
        "n_true": total_true,
        "n_pred": total_pred,
        "n_matched": matched,
    }


def sky_noise_std(blend: np.ndarray, blend_noiseless: np.ndarray) -> np.ndarray:
    """Sky noise standard deviation per band, measured as ``1.4826 MAD(blend - noiseless)``.

    The robust estimate ignores the few pixels where the source's Poisson noise dominates;
    missing (NaN) pixels are left out.

    Args:
        blend: ``(N, H, W, C)`` noisy blends.
        blend_noiseless: ``(N, H, W, C)`` the same without noise.

    Returns:
        ``(C,)`` noise std in the images' unit.
    """
    noise = np.asarray(blend, dtype=np.float64) - np.asarray(blend_noiseless, dtype=np.float64)
    noise = noise.reshape(-1, noise.shape[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a band with no finite pixel: NaN
        med = np.nanmedian(noise, axis=0)
        return MAD_TO_SIGMA * np.nanmedian(np.abs(noise - med), axis=0)


def noise_limited_flux_error(
    isolated: np.ndarray, sky_var: np.ndarray, include_poisson: bool = True
) -> np.ndarray:
    """Matched-filter flux error ``sigma_f = (sum p^2 / var)^(-1/2)`` per band.

    Args:
        isolated: ``(..., H, W, C)`` noiseless isolated galaxy; its normalized profile is
            ``p = isolated / flux`` per band.
        sky_var: ``(C,)`` sky variance per band (image unit squared).
        include_poisson: add the source's Poisson variance ``isolated`` (only meaningful for
            images in electrons) to the sky variance.

    Returns:
        ``(..., C)`` noise-limited flux error (image unit); ``nan`` where the flux is not positive.
    """
    img = np.asarray(isolated, dtype=np.float64)
    sky_var = np.asarray(sky_var, dtype=np.float64)
    flux = img.sum(axis=(-3, -2))  # (..., C)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = img / flux[..., None, None, :]
        var = sky_var + (np.clip(img, 0.0, None) if include_poisson else 0.0)
        info = (p**2 / var).sum(axis=(-3, -2))
        sigma = 1.0 / np.sqrt(info)
    return np.where(flux > 0, sigma, np.nan)


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean, median and count of the finite values of ``values``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "median": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "n": int(v.size)}
