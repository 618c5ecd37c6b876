"""sep and Source Extractor baselines on constructed images of Gaussian galaxies."""

import numpy as np
import pytest

from tfdeblend.errors import TfdeblendError
from tfdeblend.evaluate import baselines

BANDS = ["g", "r", "i"]
NOISE = np.array([10.0, 20.0, 30.0])


def gaussian(x0, y0, sigma, flux, size=80):
    yy, xx = np.mgrid[0:size, 0:size]
    im = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    return flux * im / im.sum()


@pytest.fixture(scope="module")
def two_gaussians():
    """Three noisy stamps of two well-separated round Gaussians; true fluxes per band."""
    scale = np.array([1.0, 2.0, 3.0])
    flux_a, flux_b = 3e4 * scale, 2e4 * scale
    img = np.stack(
        [gaussian(20, 25, 2.5, fa) + gaussian(58, 55, 3.0, fb) for fa, fb in zip(flux_a, flux_b)],
        axis=-1,
    )
    rng = np.random.default_rng(0)
    blends = np.stack([img + rng.normal(0, 1, img.shape) * NOISE for _ in range(3)])
    truth = {"x": [20.0, 58.0], "y": [25.0, 55.0], "flux": np.stack([flux_a, flux_b])}
    return blends, truth


def check_catalog(cat, truth, rtol):
    assert cat["n"].tolist() == [2, 2, 2]
    for i in range(3):
        order = np.argsort(cat["x"][i, :2])
        assert cat["x"][i, order] == pytest.approx(truth["x"], abs=0.2)
        assert cat["y"][i, order] == pytest.approx(truth["y"], abs=0.2)
        assert cat["flux"][i, order] == pytest.approx(truth["flux"], rel=rtol)
        # round sources: x2 ~ y2, xy ~ 0
        assert cat["mu20"][i, order] == pytest.approx(cat["mu02"][i, order], rel=0.15)
        assert np.all(np.abs(cat["mu11"][i, :2]) < 0.5)


def test_sep_finds_two_gaussians_with_fluxes_within_few_percent(two_gaussians):
    blends, truth = two_gaussians
    cat = baselines.run_sep(blends, NOISE, BANDS, progress=False)
    assert set(cat) == set(baselines.CATALOG_KEYS)
    assert cat["flux"].shape == (3, 2, 3)
    check_catalog(cat, truth, rtol=0.03)


def test_sep_detection_uses_available_bands_and_rejects_none(two_gaussians):
    blends, _ = two_gaussians
    cat = baselines.run_sep(blends[..., :1], NOISE[:1], ["g"], progress=False)
    assert cat["n"].tolist() == [2, 2, 2]
    with pytest.raises(TfdeblendError, match="detection bands"):
        baselines.run_sep(blends[..., :1], NOISE[:1], ["z"], progress=False)


def test_sep_empty_stamp_gives_no_detection():
    rng = np.random.default_rng(3)
    blends = rng.normal(0, 1, (2, 40, 40, 3)) * 1e-3  # pure noise far below the given sigma
    cat = baselines.run_sep(blends, NOISE, BANDS, progress=False)
    assert cat["n"].tolist() == [0, 0]
    assert np.all(np.isnan(cat["x"]))


def test_catalog_from_components_measures_like_measure_module():
    comp = np.zeros((1, 3, 20, 20, 2))
    comp[0, 0, 5, 4, :] = [1.0, 3.0]
    comp[0, 1, 10, 12, :] = [2.0, 2.0]
    cat = baselines.catalog_from_components(comp)
    assert cat["n"].tolist() == [2]
    assert cat["x"][0, :2].tolist() == [4.0, 12.0] and cat["y"][0, :2].tolist() == [5.0, 10.0]
    assert cat["flux"][0, 0].tolist() == [1.0, 3.0]
    assert np.isnan(cat["x"][0, 2])
    cat1 = baselines.catalog_from_components(comp, n_components=np.array([1]))
    assert cat1["n"].tolist() == [1] and np.isnan(cat1["x"][0, 1])


@pytest.mark.skipif(
    baselines.source_extractor_binary() is None, reason="Source Extractor is not installed"
)
def test_source_extractor_finds_two_gaussians(two_gaussians):
    blends, truth = two_gaussians
    cat = baselines.run_source_extractor(blends, NOISE, BANDS, progress=False)
    check_catalog(cat, truth, rtol=0.03)
    sep_cat = baselines.run_sep(blends, NOISE, BANDS, progress=False)
    for i in range(3):
        se_order, sep_order = np.argsort(cat["x"][i]), np.argsort(sep_cat["x"][i])
        # same detection algorithm: the same isophotal moments
        assert cat["mu20"][i, se_order] == pytest.approx(sep_cat["mu20"][i, sep_order], rel=0.01)


def test_source_extractor_missing_binary_is_a_clear_error(two_gaussians, monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert baselines.source_extractor_binary() is None
    with pytest.raises(TfdeblendError, match="not installed"):
        baselines.run_source_extractor(two_gaussians[0], NOISE, BANDS, progress=False)


def test_unknown_baseline():
    with pytest.raises(TfdeblendError, match="unknown baseline"):
        baselines.run_baseline("scarlet", np.zeros((1, 8, 8, 1)), np.ones(1), ["g"])


def test_sep_measures_an_object_elongated_along_y_without_failing():
    """sep returns theta = pi/2 in float32 for an object elongated along y, just beyond the
    [-pi/2, pi/2] its ellipse photometry accepts (seen on real BTK stamps): the baseline must
    still measure it instead of failing the whole report."""
    from tfdeblend.evaluate.baselines import _sep_stamp

    yy, xx = np.mgrid[:40, :40]
    profile = 40.0 * np.exp(-0.5 * (((xx - 20) / 0.8) ** 2 + ((yy - 20) / 5.0) ** 2))
    image = np.repeat(profile[..., None], 3, axis=-1) / 3.0
    import sep

    theta = sep.extract(np.ascontiguousarray(profile), 0.8, err=1.0, minarea=4)["theta"]
    assert np.abs(theta.astype(np.float64)).max() > np.pi / 2  # the case this test is about
    det = image.sum(axis=-1)
    row = _sep_stamp(image, det, 1.0, np.ones(3))
    assert len(row["x"]) >= 1
    assert np.all(np.isfinite(row["flux"]))


def test_registry_drives_the_cli_choices(monkeypatch):
    """``--baseline`` offers exactly the registered baselines, and a new registry entry shows up
    without touching the CLI module."""
    import importlib

    from tfdeblend.cli import evaluate_cmd

    def choices(module):
        (option,) = [p for p in module.evaluate.params if p.name == "baselines"]
        return list(option.type.choices)

    assert choices(evaluate_cmd) == list(baselines.BASELINES) == ["sep", "source-extractor"]
    for name, baseline in baselines.BASELINES.items():
        assert isinstance(baseline, baselines.Baseline) and baseline.name == name
        assert baseline.description

    class Dummy(baselines.Baseline):
        name = "dummy"
        description = "finds nothing"

        def run(self, images, noise_std, bands, progress=True):
            return baselines.empty_catalog(len(images), 1, len(bands))

    monkeypatch.setitem(baselines.BASELINES, "dummy", Dummy())
    try:
        assert choices(importlib.reload(evaluate_cmd)) == ["sep", "source-extractor", "dummy"]
        cat = baselines.run_baseline("dummy", np.zeros((2, 8, 8, 1)), np.ones(1), ["g"])
        assert cat["n"].tolist() == [0, 0]
    finally:
        monkeypatch.delitem(baselines.BASELINES, "dummy")
        importlib.reload(evaluate_cmd)
    assert choices(evaluate_cmd) == ["sep", "source-extractor"]


def test_sep_is_available():
    sep_baseline = baselines.get_baseline("sep")
    assert sep_baseline.available() and sep_baseline.why_unavailable() is None


def test_unavailable_baseline_is_one_clear_error_line(monkeypatch, tmp_path):
    from click.testing import CliRunner
    from tfdeblend.cli.main import cli

    monkeypatch.setenv("PATH", "")
    baseline = baselines.BASELINES["source-extractor"]
    assert not baseline.available()
    expected = ("source-extractor is not available: the `source-extractor` (or `sex`) binary is "
                "not on PATH (apt-get install source-extractor)")
    with pytest.raises(TfdeblendError) as err:
        baselines.get_baseline("source-extractor")
    assert str(err.value) == expected
    # the CLI refuses before loading anything (the test set need not even exist)
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "no_testset"), "--out",
                                      str(tmp_path / "report"), "--baseline", "source-extractor"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {expected}"]
    assert not (tmp_path / "report").exists()


def test_per_stamp_noise(two_gaussians):
    """``noise_std`` may be ``(N, C)``: equal rows give the ``(C,)`` result."""
    blends, _ = two_gaussians
    same = np.tile(NOISE, (len(blends), 1))
    for runner in ([baselines.run_sep]
                   + ([baselines.run_source_extractor] if baselines.source_extractor_binary()
                      else [])):
        ref = runner(blends, NOISE, BANDS, progress=False)
        cat = runner(blends, same, BANDS, progress=False)
        for key in baselines.CATALOG_KEYS:
            np.testing.assert_array_equal(cat[key], ref[key])
        # a stamp with its own noise is measured as it would be alone
        noise = same.copy()
        noise[1] *= 2.0
        cat = runner(blends, noise, BANDS, progress=False)
        alone = runner(blends[1:2], noise[1], BANDS, progress=False)
        k = int(alone["n"][0])
        assert cat["n"][1] == k
        np.testing.assert_array_equal(cat["flux"][1, :k], alone["flux"][0, :k])
        n0 = int(ref["n"][0])
        np.testing.assert_array_equal(cat["x"][0, :n0], ref["x"][0, :n0])
    with pytest.raises(TfdeblendError, match="noise_std must be"):
        baselines.run_sep(blends, np.ones((2, 3)), BANDS, progress=False)
