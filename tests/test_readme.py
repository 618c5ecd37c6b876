"""The README's "From Python" snippet runs as written, and its output table matches the output.

The snippet reads ``demo/blends.fits``, which the README's first command writes; here the 8-stamp
FITS test set of the data fixtures stands in for it (same layout: ``(N, 3, 80, 80)``, ``BANDS =
'g,r,i'``), in a temporary working directory. The model is the shipped one (``load_model()``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
from astropy.io import fits

README = Path(__file__).resolve().parents[1] / "README.md"
USAGE = README.parent / "docs" / "usage.md"
#: FITS structure keywords, not tfdeblend's
_STRUCTURE = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND"}


def _python_block(text: str, heading: str) -> str:
    """The first ```python block after ``heading``."""
    after = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


def _table_row(text: str, first_cell: str) -> str:
    """The first table row of ``text`` whose first cell is ``first_cell``."""
    match = re.search(rf"^\| {re.escape(first_cell)} \|(.*)$", text, re.M)
    assert match, f"no table row {first_cell!r}"
    return match.group(1)


def _hdu_table(text: str) -> list[str]:
    """The HDU names of the first ``| HDU | content |`` table of ``text``."""
    table = text[text.index("| HDU | content |") :].split("\n\n")[0]
    return re.findall(r"^\| `([A-Z]+)` \|", table, re.M)


def test_readme_python_snippet_runs(tmp_path, monkeypatch, fits_testset):
    (tmp_path / "demo").mkdir()
    shutil.copy(fits_testset / "blends.fits", tmp_path / "demo" / "blends.fits")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TFDEBLEND_MODEL", raising=False)  # load_model(): the shipped model
    code = _python_block(README.read_text(), "### From Python")
    namespace: dict = {}
    exec(compile(code, "README.md (From Python)", "exec"), namespace)  # noqa: S102

    images, out, summary = namespace["images"], namespace["out"], namespace["summary"]
    assert images.shape == (8, 80, 80, 3) and images.dtype == np.float32
    k = namespace["model"].peel_config.max_iterations
    assert out["components"].shape == (8, k, 80, 80, 3)
    assert out["conserved"].shape == (8, k, 80, 80, 3) and out["noise_std"].shape == (8, 3)
    np.testing.assert_allclose(  # the components and the residual add up to the input
        out["components"].sum(axis=1) + out["residual"], images, rtol=1e-4, atol=1e-2
    )
    assert summary["n_blends"] == 8 and sum(summary["quality"].values()) == 8

    # the README's and usage.md's output tables name every primary header key and every HDU
    with fits.open(tmp_path / "demo" / "deblended_py.fits") as hdul:
        keys = set(hdul[0].header) - _STRUCTURE
        hdus = [hdu.name for hdu in hdul[1:]]
        np.testing.assert_array_equal(
            hdul["COMPONENTS"].data.transpose(0, 1, 3, 4, 2), out["components"]
        )
    for doc in (README, USAGE):
        text = doc.read_text()
        documented = set(re.findall(r"`([A-Z][A-Z0-9]*)`", _table_row(text, "primary")))
        assert documented == keys, (doc.name, sorted(keys ^ documented))
        assert _hdu_table(text) == hdus, doc.name
