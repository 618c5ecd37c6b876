"""The evaluation report on small real BTK test sets with a real exported (tiny) model."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tfdeblend.errors import TfdeblendError
from tfdeblend.evaluate import analysis, figures, pipeline
from tfdeblend.evaluate import baselines as bl

N_STAMPS = 8


@pytest.fixture(scope="module")
def eval_dirs(tmp_path_factory):
    """A 2-galaxy and a 3-galaxy FITS test set rendered with BTK (8 stamps each)."""
    from tfdeblend.data import write_fits_testset
    from tfdeblend.simulate import SimConfig, simulate

    root = tmp_path_factory.mktemp("eval_data")
    dirs = []
    for n_gal in (2, 3):
        config = SimConfig(kind="test", count=N_STAMPS, n_gal=n_gal, seed=10 + n_gal)
        out = root / f"test{n_gal}gal"
        write_fits_testset(list(simulate(config, jobs=1)), out, config)
        dirs.append(out)
    return dirs


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A real exported SavedModel of the tiny preset (untrained weights, fixed seed)."""
    import keras

    from tfdeblend.export import ModelBundle, export_model
    from tfdeblend.models.classifier import build_classifier
    from tfdeblend.models.presets import get_classifier_config, get_rdn_config
    from tfdeblend.models.rdn import build_rdn
    from tfdeblend.peel_config import PeelConfig

    keras.utils.set_random_seed(0)
    bundle = ModelBundle(build_rdn(get_rdn_config("tiny")),
                         build_classifier(get_classifier_config("tiny")))
    out = tmp_path_factory.mktemp("eval_model") / "tiny"
    export_model(bundle, out, peel=PeelConfig(max_iterations=3))
    return out


@pytest.fixture(scope="module")
def full_report(eval_dirs, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_report") / "report"
    chosen = ("sep", "source-extractor") if bl.source_extractor_binary() else ("sep",)
    results = pipeline.evaluate(eval_dirs, tiny_model_dir, out, baselines=chosen, batch_size=4,
                                progress=False)
    return out, results


def test_report_writes_every_table_and_figure(full_report, eval_dirs):
    out, results = full_report
    names = [d.name for d in eval_dirs]
    for name in names:
        for suffix, _ in figures.FIGURES.values():
            png = out / f"{name}_{suffix}"
            assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", png
    text = (out / "report.md").read_text()
    for heading in ("Table I", "Table II", "side by side", "by quality bin", "Figures",
                    "by separation from the nearest other galaxy", "Flux on the same galaxies"):
        assert heading in text
    for paper_number in ("77.3", "50.4", "36.9", "56.51", "59.29", "97.9"):
        assert paper_number in text
    for name in names:
        assert f"({name}_fig6_flux_x.png)" in text
    # no leftover temporary directory beside the report
    assert [p.name for p in out.parent.iterdir()] == ["report"]


def test_metrics_json_keys_and_consistency(full_report, eval_dirs, tiny_model_dir):
    out, results = full_report
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) >= {"model", "definitions", "paper", "baselines", "testsets", "figures"}
    ts2 = saved["testsets"][eval_dirs[0].name]
    ts3 = saved["testsets"][eval_dirs[1].name]
    assert ts2["n_gal_counts"] == {"2": N_STAMPS} and ts3["n_gal_counts"] == {"3": N_STAMPS}
    for ts in (ts2, ts3):
        q = ts["table1_quality"]["all"]
        assert q["high"] + q["medium"] + q["low"] == pytest.approx(1.0)
        assert set(ts["methods"]) == {"tfdeblend", *results["baselines"]}
        for method in ts["methods"].values():
            assert set(method) >= {"detection", "x", "y"}
            assert set(method["x"]) >= {"flux", "flux_band_sum", "moments", "found_fraction",
                                        "flux_error_over_noise_limit", "flux_fit"}
        # BTK's sky noise in the LSST 10-year g, r, i images (FACTS.md: ~158, 361, 430)
        assert ts["sky_noise_std"]["g"] == pytest.approx(158, rel=0.1)
        assert ts["sky_noise_std"]["i"] == pytest.approx(430, rel=0.1)
    assert [row["deblend_index"] for row in ts3["table2_image_metrics"]["3"]] == [1, 2, 3]
    # Table I and the post-peel counts are what the model itself says
    from tfdeblend.data import load_testset
    from tfdeblend.export import load_model

    out2 = load_model(tiny_model_dir).deblend(load_testset(eval_dirs[0])["blend"])
    assert ts2["table1_quality"]["2"]["high"] == pytest.approx(np.mean(out2["quality"] == 2))
    assert ts2["post_peel_blends"] == {
        "split": int(out2["split"].sum()), "recovered": int(out2["recovered"].sum()),
        "merged": int(out2["merged"].sum()), "pruned": int(out2["pruned"].sum()),
    }
    assert f"{ts2['post_peel_blends']['split']} blend(s) had a merged component split" in (
        out / "report.md"
    ).read_text()
    # sep finds nearly all the bright galaxies of these blends
    assert ts2["methods"]["sep"]["x"]["found_fraction"] >= 0.75
    # the same-galaxies comparison counts only galaxies both methods found
    for base in results["baselines"]:
        for label in ("x", "y"):
            same = ts2["same_galaxies"][base][label]
            found = [ts2["methods"][m][label]["n_found"] for m in ("tfdeblend", base)]
            assert 0 <= same["n"] <= min(found)
            assert same["ours"]["flux_band_sum"]["n"] <= same["n"]
            assert set(same["theirs"]["flux"]) == {"g", "r", "i"}


def test_same_galaxies_compares_only_the_galaxies_both_found():
    true = np.array([[100.0, 50.0], [100.0, 50.0], [100.0, 50.0]])

    def arrays(found, measured):
        found = np.array(found)
        meas = np.where(found[:, None], np.array(measured, dtype=float), np.nan)
        rel = (meas - true) / true
        return {"x": {"found": found, "rel": rel, "rel_sum": (meas.sum(1) - 150.0) / 150.0}}

    ours = arrays([True, True, False], [[110.0, 55.0], [90.0, 45.0], [0.0, 0.0]])
    theirs = arrays([True, False, True], [[80.0, 40.0], [0.0, 0.0], [100.0, 50.0]])
    same = analysis.same_galaxies(ours, theirs, ["g", "r"])
    assert set(same) == {"x"} and same["x"]["n"] == 1
    # only the first galaxy counts: +10 % for us, -20 % for them, in every band and the sum
    assert same["x"]["ours"]["flux_band_sum"]["bias"] == pytest.approx(0.1)
    assert same["x"]["theirs"]["flux"]["r"]["bias"] == pytest.approx(-0.2)
    assert same["x"]["ours"]["flux"]["g"]["n"] == 1


class TruthDeblender:
    """A stand-in deblender that returns the true galaxies (plus a little noise), in *reverse*
    brightness order, so that the report must match components to galaxies by position."""

    name = "truth"
    bands = ("g", "r", "i")
    stamp_size = 80

    def __init__(self, testset):
        self.testset = testset
        self.calls = 0

    def deblend(self, images, batch_size=32):
        ts = self.testset
        index = [int(np.flatnonzero((ts["blend"] == im).all(axis=(1, 2, 3)))[0]) for im in images]
        iso = np.asarray(ts["isolated"])[index]
        n_gal = np.asarray(ts["n_gal"])[index]
        comps = np.zeros_like(iso)
        for r, n in enumerate(n_gal):
            comps[r, :n] = iso[r, :n][::-1]
        comps = comps + np.random.default_rng(self.calls).normal(0, 1e-3, comps.shape) * (
            comps != 0)
        self.calls += 1
        return {"components": comps, "residual": images - comps.sum(axis=1),
                "counts": np.zeros((len(images), 4), np.int32),
                "quality": np.full(len(images), 2, np.int32), "n_components": n_gal}


def test_truth_deblender_scores_perfectly(eval_dirs, tmp_path):
    from tfdeblend.data import load_testset

    ts = load_testset(eval_dirs[1])
    model = TruthDeblender(ts)
    results = pipeline.evaluate_loaded({"t3": ts}, model, tmp_path / "r",
                                       baselines=(), batch_size=3, progress=False)
    assert model.calls == 3  # 8 stamps in batches of 3; the figures never call the model
    entry = results["testsets"]["t3"]
    ours = entry["methods"]["tfdeblend"]
    assert ours["detection"]["recall"] == 1.0 and ours["detection"]["precision"] == 1.0
    assert entry["table1_quality"]["3"]["high"] == 1.0
    for label in ("x", "y"):
        assert ours[label]["found_fraction"] == 1.0
        assert abs(ours[label]["flux_band_sum"]["bias"]) < 1e-4
        assert abs(ours[label]["moments"]["mu11"]["bias"]) < 1e-3
        bins = ours[label]["found_by_separation"]
        assert sum(b["n"] for b in bins.values()) == ours[label]["n_true"]
        assert all(b["found_fraction"] == 1.0 for b in bins.values() if b["n"])
        assert ours[label]["isolated_snr"]["median"] > 10
        by_snr = ours[label]["found_by_snr"]
        assert sum(b["n"] for b in by_snr.values()) == ours[label]["n_true"]
    for row in entry["table2_image_metrics"]["3"]:
        assert row["psnr"]["n"] == N_STAMPS and row["psnr"]["median"] > 80
        assert row["ssim"]["median"] > 0.999
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["baselines"] == []


def test_nearest_separation_and_its_bins():
    ts = {"x": np.array([[10.0, 13.0, 50.0], [5.0, 0.0, 0.0], [1.0, 1.0, 9.0]]),
          "y": np.array([[10.0, 14.0, 10.0], [5.0, 0.0, 0.0], [1.0, 7.0, 1.0]]),
          "n_gal": np.array([3, 1, 3])}
    np.testing.assert_allclose(analysis.nearest_separation(ts, 0), [5.0, np.inf, 6.0])
    np.testing.assert_allclose(analysis.nearest_separation(ts, 1), [5.0, np.nan, 6.0])
    np.testing.assert_allclose(analysis.nearest_separation(ts, 2), [np.hypot(37, 4), np.nan, 8.0])
    bins = analysis.found_by_separation(np.array([True, True, True]), np.array([True, False, True]),
                                      np.array([5.0, 6.0, 30.0]))
    assert bins["4-8"] == {"n": 2, "found_fraction": 0.5}
    assert bins[">=20"] == {"n": 1, "found_fraction": 1.0}
    assert bins["0-4"]["n"] == 0


def test_found_by_snr_bins_each_galaxy_by_its_snr_alone():
    # two bands: S/N alone = sqrt((f1/s1)^2 + (f2/s2)^2) = 3, 5, 13, 100
    flux = np.array([[3.0, 0.0], [3.0, 4.0], [5.0, 12.0], [60.0, 80.0]])
    sigma = np.ones_like(flux)
    snr = analysis.isolated_snr(flux, sigma)
    np.testing.assert_allclose(snr, [3.0, 5.0, 13.0, 100.0])
    present = np.array([True, True, True, True])
    found = np.array([False, True, False, True])
    bins = analysis.found_by_snr(present, found, snr)
    assert bins["0-5"] == {"n": 1, "found_fraction": 0.0}
    assert bins["5-10"] == {"n": 1, "found_fraction": 1.0}  # 5 falls in [5, 10)
    assert bins["10-20"] == {"n": 1, "found_fraction": 0.0}
    assert bins[">=50"] == {"n": 1, "found_fraction": 1.0}
    assert bins["20-50"]["n"] == 0 and np.isnan(bins["20-50"]["found_fraction"])


def test_mismatched_bands_or_stamp_size_is_a_clear_error(eval_dirs, tmp_path):
    from tfdeblend.data import load_testset

    ts = load_testset(eval_dirs[0])
    model = TruthDeblender(ts)
    wrong_bands = dict(ts, bands=np.array(["r", "i", "z"]))
    with pytest.raises(TfdeblendError, match="bands r,i,z but the model expects g,r,i"):
        pipeline.evaluate_loaded({"a": wrong_bands}, model, tmp_path / "r", progress=False)
    model.stamp_size = 64
    with pytest.raises(TfdeblendError, match="expects 64x64"):
        pipeline.evaluate_loaded({"a": ts}, model, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_existing_output_and_bad_options_are_refused(eval_dirs, tiny_model_dir, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TfdeblendError, match="already exists"):
        pipeline.evaluate(eval_dirs[:1], tiny_model_dir, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(TfdeblendError, match="does not exist"):
        pipeline.evaluate([tmp_path / "nope"], tiny_model_dir, tmp_path / "r", progress=False)
    with pytest.raises(TfdeblendError, match="unknown baseline"):
        pipeline.evaluate(eval_dirs[:1], tiny_model_dir, tmp_path / "r", baselines=("scarlet",),
                        progress=False)
    assert not (tmp_path / "r").exists()


def test_cli_evaluate(eval_dirs, tiny_model_dir, tmp_path):
    from tfdeblend.cli.main import cli

    runner = CliRunner()
    out = tmp_path / "cli_report"
    result = runner.invoke(cli, ["evaluate", str(eval_dirs[0]), "--out", str(out), "--model",
                                 str(tiny_model_dir), "--baseline", "sep", "--batch-size", "4",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert "quality high/medium/low" in result.output
    assert (out / "report.md").is_file() and (out / "metrics.json").is_file()
    # second run without --overwrite: one clear error line, no traceback
    again = runner.invoke(cli, ["evaluate", str(eval_dirs[0]), "--out", str(out), "--model",
                                str(tiny_model_dir), "--quiet"])
    assert again.exit_code == 1
    assert again.output.strip().startswith("Error:") and "Traceback" not in again.output
    missing = runner.invoke(cli, ["evaluate", str(tmp_path / "none"), "--out",
                                  str(tmp_path / "o"), "--model", str(tiny_model_dir)])
    assert missing.exit_code == 1 and "Error:" in missing.output


def test_model_runs_once_per_testset(eval_dirs, tiny_model_dir, tmp_path, monkeypatch):
    """evaluate deblends each test set once (one call when the batch holds the whole set); the
    gallery of Fig. 13 reuses those outputs instead of calling the model again."""
    from tfdeblend.export import DeblendModel

    calls = []
    deblend = DeblendModel.deblend

    def counting(self, images, batch_size=32):
        calls.append(np.array(images))
        return deblend(self, images, batch_size=batch_size)

    monkeypatch.setattr(DeblendModel, "deblend", counting)
    results = pipeline.evaluate(eval_dirs, tiny_model_dir, tmp_path / "r", baselines=(),
                                batch_size=N_STAMPS, progress=False)
    assert len(calls) == len(eval_dirs) == len(results["testsets"])
    from tfdeblend.data import load_testset

    for images, path in zip(calls, eval_dirs):
        np.testing.assert_array_equal(images, load_testset(path)["blend"])
    assert (tmp_path / "r" / f"{eval_dirs[0].name}_fig13_failures_tfdeblend.png").is_file()


class TruthBaseline(bl.Baseline):
    """A baseline registered at run time: the true positions and fluxes of the test set."""

    name = "truth"
    description = "the true catalog"

    def __init__(self, testset):
        self.testset = testset

    def run(self, images, noise_std, bands, progress=True):
        ts = self.testset
        return {"x": ts["x"], "y": ts["y"], "flux": ts["flux"], "mu20": ts["mu20"],
                "mu02": ts["mu02"], "mu11": ts["mu11"], "n": ts["n_gal"]}


def test_a_registered_baseline_runs_without_changes_elsewhere(eval_dirs, tmp_path, monkeypatch):
    from tfdeblend.data import load_testset

    ts = load_testset(eval_dirs[0])
    monkeypatch.setitem(bl.BASELINES, "truth", TruthBaseline(ts))
    results = pipeline.evaluate_loaded({"t2": ts}, TruthDeblender(ts), tmp_path / "r",
                                       baselines=("truth",), batch_size=8, progress=False)
    truth = results["testsets"]["t2"]["methods"]["truth"]
    assert truth["x"]["found_fraction"] == 1.0 and truth["detection"]["precision"] == 1.0
    assert results["testsets"]["t2"]["same_galaxies"]["truth"]["x"]["n"] == N_STAMPS
    assert "| metric | tfdeblend | truth |" in (tmp_path / "r" / "report.md").read_text()


def test_unknown_or_unavailable_baseline_is_refused_before_any_work(eval_dirs, tmp_path,
                                                                    monkeypatch):
    from tfdeblend.data import load_testset

    ts = load_testset(eval_dirs[0])
    model = TruthDeblender(ts)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(TfdeblendError, match="^source-extractor is not available: .* not on PATH"):
        pipeline.evaluate_loaded({"a": ts}, model, tmp_path / "r",
                                 baselines=("sep", "source-extractor"), progress=False)
    assert model.calls == 0 and not (tmp_path / "r").exists()


def test_analysis_computes_metrics_without_figures_report_or_pipeline():
    """The analysis layer is numbers in, numbers out: it computes the metrics in an interpreter
    where matplotlib and the figures, report and pipeline modules cannot be imported."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys
        for blocked in ("matplotlib", "tensorflow", "tfdeblend.evaluate.figures",
                        "tfdeblend.evaluate.report", "tfdeblend.evaluate.pipeline"):
            sys.modules[blocked] = None  # any import of these fails
        import numpy as np
        from tfdeblend.evaluate import analysis

        iso = np.zeros((2, 2, 9, 9, 1))
        iso[:, 0, 2, 2, 0] = 100.0
        iso[:, 1, 6, 6, 0] = 50.0
        ts = {"isolated": iso, "n_gal": np.array([2, 2]), "bands": np.array(["g"]),
              "x": np.array([[2.0, 6.0]] * 2), "y": np.array([[2.0, 6.0]] * 2),
              "flux": np.array([[[100.0], [50.0]]] * 2), "mu20": np.full((2, 2), 0.1),
              "mu02": np.full((2, 2), 0.1), "mu11": np.zeros((2, 2))}
        catalog = {"x": ts["x"], "y": ts["y"], "flux": ts["flux"] * 1.1, "mu20": ts["mu20"],
                   "mu02": ts["mu02"], "mu11": ts["mu11"], "n": ts["n_gal"]}
        result = analysis.analyze_catalog(catalog, ts, np.array([1.0]))
        assert result["summary"]["x"]["found_fraction"] == 1.0
        assert abs(result["summary"]["y"]["flux_band_sum"]["bias"] - 0.1) < 1e-12
        img = analysis.image_metrics(iso, np.array([2, 2]), ts)
        assert np.all(img["truth"] == [[0, 1], [0, 1]])
        table = analysis.table2(img, ts["n_gal"])
        assert [row["deblend_index"] for row in table["2"]] == [1, 2]
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def _imported_modules(path):
    import ast

    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_evaluation_layers_import_one_way():
    """analysis <- figures, report <- pipeline; inference never imports evaluation."""
    from pathlib import Path

    import tfdeblend

    root = Path(tfdeblend.__file__).parent
    evaluate = "tfdeblend.evaluate"
    forbidden = {
        "analysis": {f"{evaluate}.figures", f"{evaluate}.report", f"{evaluate}.pipeline",
                     "matplotlib", "tfdeblend.export", "tfdeblend.deblend"},
        "figures": {f"{evaluate}.pipeline", f"{evaluate}.report", f"{evaluate}.baselines",
                    "tfdeblend.export", "tfdeblend.deblend"},
        "report": {f"{evaluate}.pipeline", f"{evaluate}.figures", "matplotlib",
                   "tfdeblend.export"},
    }
    for module, bad in forbidden.items():
        imported = _imported_modules(root / "evaluate" / f"{module}.py")
        assert not {name for name in imported
                    if any(name == b or name.startswith(b + ".") for b in bad)}, module
    for module in ("deblend", "export", "fitsio"):
        imported = _imported_modules(root / f"{module}.py")
        assert not [name for name in imported if name.startswith(evaluate)], module
