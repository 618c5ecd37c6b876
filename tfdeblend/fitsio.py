"""FITS in and out for ``tfdeblend run``: validated blend stamps in, deblended results out.

Input (:func:`open_blends`, :func:`read_blends`): the primary HDU, or the first image extension
when the primary is empty, holding float stamps ``(N, C, H, W)`` or one stamp ``(C, H, W)``
(channels first, any linear flux unit), with a header keyword ``BANDS = 'g,r,i'`` naming the
channels. Checks, each refused with one line (:class:`tfdeblend.errors.DataError`): missing or
empty file, not FITS, no image HDU, wrong number of dimensions, non-square stamps or a stamp size
other than the model's, ``BANDS`` missing, not matching the number of channels or lacking one of
the model's bands (extra bands are allowed: the model's are selected, in the model's order), no
stamps. With ``check_finite`` (the default for :func:`read_blends`), NaN/inf pixels are refused
too, with the number of bad pixels and stamps; ``tfdeblend run`` opens files without that check
and treats such pixels as missing data instead (:func:`tfdeblend.run.fill_stamps`). All-zero
stamps are fine (they come out with no components).

Large files are read lazily (astropy memmap) batch by batch.

Output (:class:`ResultWriter`, :func:`write_results`; the latter writes ``CONSERVED`` when
given it), written atomically (temporary file, then rename), channels first:

- primary HDU: header only (``MODEL``, ``MODELVER``, ``BANDS``, ``BUNIT``, ``INPUT``,
  ``NBLENDS``, ``TFDBVER``, ``AXES``, and the peel's cards ``MAXITER``, ``NVIEWS``,
  ``VIEWCONF``, ``SPLIT``, ``REFINE``, ``DETECTSN``, ``DETECTWN``, ``MERGERAD``:
  :meth:`PeelConfig.header_cards`);
- ``COMPONENTS`` float32 ``(N, K, C, H, W)``: the peeled galaxies in the input's units, peel
  order (brightest first), zero padded to ``K`` (the model's max iterations);
- ``RESIDUAL`` float32 ``(N, C, H, W)``: input minus the components;
- ``CONSERVED`` float32 ``(N, K, C, H, W)``: the flux-conserving components (the data split
  among the galaxies in proportion to their models, :func:`tfdeblend.deblend.conserve_flux`);
  input minus their sum is the flux outside every footprint;
- ``CATALOG`` table, one row per component, measured on the ``CONSERVED`` components:
  ``blend_id, component, x, y`` (flux-weighted centroid, 0-based pixels), ``flux_<band>`` (input
  units), ``mu20, mu02, mu11`` (pixels^2, see :mod:`tfdeblend.measure`), ``quality``;
- ``BLENDS`` table, one row per blend: ``blend_id, n_components, quality`` (2 high, 1 medium,
  0 low), ``quality_name``, ``counts`` (classifier count before each step, ``-1`` where the
  step was not run), ``split`` (1 where a component the classifier counted as several galaxies
  was split after the peel), ``recovered`` (1 where the residual detection added a galaxy),
  ``merged`` (components merged into a brighter one), ``pruned`` (components dropped after the
  peel as not significant, their flux left to the residual), ``outliers`` (single-pixel outliers the
  networks did not see, :mod:`tfdeblend.outliers`), ``missing`` (NaN/inf input pixels, filled
  from their neighbours for the networks and NaN in ``RESIDUAL``), ``noise_<band>`` (robust noise sigma of the
  residual, input units).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

import tfdeblend
from tfdeblend import measure
from tfdeblend.config import QUALITY_NAMES, parse_band_keyword, parse_bands
from tfdeblend.errors import DataError, TfdeblendError
from tfdeblend.utils import atomic_file, check_output_path, scratch_prefix

#: Stamps scanned at a time when checking for NaN/inf pixels.
SCAN_CHUNK = 256


class BlendFile:
    """A validated, lazily read FITS file of blend stamps (channels first).

    Use :func:`open_blends` to build one (it is a context manager).

    Attributes:
        path: the file.
        header: the image HDU's header.
        bands: the bands returned by :meth:`read` (the model's when given, else the file's).
        file_bands: the bands of the file, channel order.
        n: number of stamps.
        stamp_size: side of the stamps, pixels (their width).
        height, width: the stamps' size, pixels (smaller than the model's only where
            :func:`open_blends` was given ``smaller_ok``).
        bunit: the ``BUNIT`` keyword (``""`` when absent).
    """

    def __init__(self, path, hdul, hdu, bands, file_bands, channels):
        self.path = Path(path)
        self._hdul = hdul
        self._data = hdu.data
        self.header = hdu.header
        self.bands = bands
        self.file_bands = file_bands
        self._channels = channels
        self._single = self._data.ndim == 3
        self.n = 1 if self._single else int(self._data.shape[0])
        self.height, self.width = (int(v) for v in self._data.shape[-2:])
        self.stamp_size = self.width
        self.bunit = str(self.header.get("BUNIT", ""))

    def __len__(self) -> int:
        return self.n

    def __enter__(self) -> BlendFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying file."""
        self._data = None
        self._hdul.close()

    def read(
        self, start: int = 0, stop: int | None = None, channels_last: bool = False
    ) -> np.ndarray:
        """Stamps ``start:stop`` as float32, the selected bands only.

        Args:
            start, stop: stamp range.
            channels_last: return ``(n, H, W, C)`` (what the networks take) instead of the
                file's ``(n, C, H, W)``.
        """
        stop = self.n if stop is None else min(stop, self.n)
        data = self._data[None] if self._single else self._data[start:stop]
        data = np.asarray(physical(data, self.header), dtype=np.float32)
        if self._single:
            data = data[start:stop]
        if self._channels is not None:
            data = data[:, self._channels]
        if channels_last:
            data = np.transpose(data, (0, 2, 3, 1))
        return np.ascontiguousarray(data)

    def check_finite(self) -> None:
        """Refuse NaN/inf pixels with the count of bad pixels and stamps."""
        bad_pixels = 0
        bad_stamps: list[int] = []
        for start in range(0, self.n, SCAN_CHUNK):
            chunk = self.read(start, start + SCAN_CHUNK)
            bad = ~np.isfinite(chunk)
            if bad.any():
                bad_pixels += int(bad.sum())
                bad_stamps.extend((start + np.flatnonzero(bad.any(axis=(1, 2, 3)))).tolist())
        if bad_pixels:
            raise DataError(
                f"{self.path} has {bad_pixels} NaN/inf pixel(s) in {len(bad_stamps)} stamp(s) "
                f"(first: stamp {bad_stamps[0]}); replace them (e.g. with 0) before deblending"
            )


def open_fits(path: str | os.PathLike) -> fits.HDUList:
    """Open a FITS file read-only (memmap) with every header read, or one clear error.

    Image data come as stored (``do_not_scale_image_data``: astropy cannot memory-map scaled
    data, e.g. BITPIX 16 with ``BSCALE`` or unsigned integers); :func:`physical` scales a region
    read from them.

    Raises:
        DataError: missing, a directory, empty, truncated, or not FITS.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a FITS file")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    try:
        with warnings.catch_warnings():
            # astropy only warns about a short file, then fails on the first read of the data
            warnings.filterwarnings("error", "File may have been truncated", AstropyUserWarning)
            hdul = fits.open(path, memmap=True, mode="readonly", do_not_scale_image_data=True)
            hdul.verify("silentfix")
            len(hdul)  # forces reading every header
    except AstropyUserWarning as err:
        raise DataError(f"{path} is truncated ({str(err).splitlines()[0]})") from err
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"{path} is not a readable FITS file ({str(err).splitlines()[0]})") from err
    return hdul


def physical(raw: np.ndarray, header: fits.Header) -> np.ndarray:
    """Pixels read as stored (a file opened with ``do_not_scale_image_data``, as
    :func:`open_fits` does) in physical values: ``BSCALE * raw + BZERO`` as float64, with
    integer ``BLANK`` pixels NaN; ``raw`` itself when the header scales nothing."""
    bscale = float(header.get("BSCALE", 1.0))
    bzero = float(header.get("BZERO", 0.0))
    raw = np.asarray(raw)
    blank = header.get("BLANK") if raw.dtype.kind in "iu" else None
    if bscale == 1.0 and bzero == 0.0 and blank is None:
        return raw
    out = raw.astype(np.float64) * bscale + bzero
    if blank is not None:
        out[raw == int(blank)] = np.nan
    return out


def _find_image_hdu(path: Path, hdul) -> fits.hdu.base._BaseHDU:
    for hdu in hdul:
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.header.get("NAXIS", 0) > 0:
            return hdu
    raise DataError(f"{path} holds no image HDU (expected stamps (N, C, H, W) in the primary HDU)")


def open_blends(
    path: str | os.PathLike,
    bands: tuple[str, ...] | list[str] | str | None = None,
    stamp_size: int | None = None,
    check_finite: bool = True,
    smaller_ok: bool = False,
) -> BlendFile:
    """Open and validate a FITS file of blend stamps (see the module docstring).

    Args:
        path: the FITS file.
        bands: the model's bands; the file must have them all (extra ones are dropped).
        stamp_size: the model's stamp size, pixels.
        check_finite: scan for NaN/inf pixels (one pass over the file).
        smaller_ok: accept stamps smaller than ``stamp_size`` in either direction (square or
            not; :func:`tfdeblend.run.fill_stamps` pads them for the networks); larger ones are
            refused all the same.

    Returns:
        A :class:`BlendFile` (close it, or use it as a context manager).

    Raises:
        DataError: any of the problems listed in the module docstring.
    """
    path = Path(path)
    hdul = open_fits(path)
    try:
        hdu = _find_image_hdu(path, hdul)
        header = hdu.header
        ndim = int(header["NAXIS"])
        shape = tuple(int(header[f"NAXIS{i}"]) for i in range(ndim, 0, -1))
        if ndim not in (3, 4):
            raise DataError(
                f"{path}: the image has {ndim} dimension(s) {shape}; expected stamps "
                "(N, C, H, W) or one stamp (C, H, W), channels first"
            )
        if header.get("BITPIX") not in (-32, -64, 8, 16, 32, 64):
            raise DataError(f"{path}: unsupported BITPIX {header.get('BITPIX')}")
        n_channels, height, width = shape[-3:]
        if ndim == 4 and shape[0] == 0:
            raise DataError(f"{path} holds no stamps (shape {shape})")
        size = None if stamp_size is None else int(stamp_size)
        if size is not None and max(height, width) > size:
            raise DataError(
                f"{path}: stamps are {height}x{width} pixels, larger than the model's "
                f"{size}x{size}; deblend each as an image (`tfdeblend run` takes one "
                "(C, H, W) cube of any size) or cut them to the model's size"
            )
        if size is not None and (height, width) != (size, size) and not smaller_ok:
            raise DataError(
                f"{path}: stamps are {height}x{width} pixels; the model needs {size}x{size}"
            )
        if size is None and height != width:
            raise DataError(f"{path}: stamps are {height}x{width} pixels; they must be square")
        if "BANDS" not in header:
            raise DataError(
                f"{path}: no BANDS header keyword naming the {n_channels} channel(s) "
                "(e.g. BANDS = 'g,r,i')"
            )
        try:
            file_bands = parse_band_keyword(header["BANDS"])
        except TfdeblendError as err:
            raise DataError(f"{path}: bad BANDS header {header['BANDS']!r}: {err}") from err
        if len(file_bands) != n_channels:
            raise DataError(
                f"{path}: BANDS = {','.join(file_bands)} names {len(file_bands)} band(s) but the "
                f"image has {n_channels} channel(s)"
            )
        channels = None
        out_bands = file_bands
        if bands is not None:
            model_bands = parse_bands(bands)
            missing = [b for b in model_bands if b not in file_bands]
            if missing:
                raise DataError(
                    f"{path} has bands {','.join(file_bands)}; the model needs "
                    f"{','.join(model_bands)} (missing {','.join(missing)})"
                )
            if model_bands != file_bands:
                channels = [file_bands.index(b) for b in model_bands]
            out_bands = model_bands
        blends = BlendFile(path, hdul, hdu, out_bands, file_bands, channels)
        if check_finite:
            blends.check_finite()
        return blends
    except BaseException:
        hdul.close()
        raise


def read_blends(
    path: str | os.PathLike,
    bands: tuple[str, ...] | list[str] | str | None = None,
    stamp_size: int | None = None,
    channels_last: bool = False,
) -> tuple[np.ndarray, fits.Header, tuple[str, ...]]:
    """Read a whole (small) FITS file of stamps.

    Returns:
        ``(images (N, C, H, W) float32, header, bands)`` in input units; the images are
        ``(N, H, W, C)`` with ``channels_last``.
    """
    with open_blends(path, bands=bands, stamp_size=stamp_size) as blends:
        return blends.read(channels_last=channels_last), blends.header.copy(), blends.bands


def component_catalog(
    components: np.ndarray,
    n_components: np.ndarray,
    quality: np.ndarray,
    bands: tuple[str, ...],
    first_blend_id: int = 0,
) -> Table:
    """One row per peeled component, measured with :mod:`tfdeblend.measure`.

    Args:
        components: ``(N, K, H, W, C)`` channels last, input units.
        n_components: ``(N,)`` number of real components per blend.
        quality: ``(N,)`` quality of each blend.
        bands: band names, channel order.
        first_blend_id: blend id of ``components[0]``.
    """
    rows_blend, rows_comp, images, rows_quality = [], [], [], []
    for i in range(len(components)):
        for j in range(int(n_components[i])):
            rows_blend.append(first_blend_id + i)
            rows_comp.append(j)
            rows_quality.append(int(quality[i]))
            images.append(components[i, j])
    table = Table()
    table["blend_id"] = np.asarray(rows_blend, dtype=np.int64)
    table["component"] = np.asarray(rows_comp, dtype=np.int16)
    if images:
        stack = np.stack(images)
        mom = measure.moments(stack)
        flux = measure.fluxes(stack)
    else:
        mom = {k: np.zeros(0) for k in ("x", "y", "mu20", "mu02", "mu11")}
        flux = np.zeros((0, len(bands)))
    table["x"] = mom["x"].astype(np.float32)
    table["y"] = mom["y"].astype(np.float32)
    for b, band in enumerate(bands):
        table[f"flux_{band}"] = flux[:, b].astype(np.float64)
    for key in ("mu20", "mu02", "mu11"):
        table[key] = mom[key].astype(np.float32)
    table["quality"] = np.asarray(rows_quality, dtype=np.int16)
    table["x"].unit = table["y"].unit = "pix"
    for key in ("mu20", "mu02", "mu11"):
        table[key].unit = "pix2"
    return table


def blends_table(
    n_components: np.ndarray,
    quality: np.ndarray,
    counts: np.ndarray,
    first_blend_id: int = 0,
    noise_std: np.ndarray | None = None,
    bands: tuple[str, ...] = (),
    split: np.ndarray | None = None,
    recovered: np.ndarray | None = None,
    merged: np.ndarray | None = None,
    pruned: np.ndarray | None = None,
    outliers: np.ndarray | None = None,
    missing: np.ndarray | None = None,
) -> Table:
    """One row per blend: ``blend_id, n_components, quality, quality_name, counts, split,
    recovered, merged, pruned, outliers, missing`` and, when ``noise_std`` ``(N, C)`` is given,
    ``noise_<band>``.

    ``outliers`` is the number of single-pixel outliers (cosmic rays, hot pixels) the networks
    did not see (:mod:`tfdeblend.outliers`), ``missing`` the number of NaN/inf pixels filled for
    them; 0 when not given."""
    n = len(n_components)
    table = Table()
    table["blend_id"] = np.arange(first_blend_id, first_blend_id + n, dtype=np.int64)
    table["n_components"] = np.asarray(n_components, dtype=np.int16)
    table["quality"] = np.asarray(quality, dtype=np.int16)
    table["quality_name"] = np.asarray([QUALITY_NAMES[int(q)] for q in quality], dtype="U6")
    table["counts"] = np.asarray(counts, dtype=np.int16).reshape(n, -1)
    table["split"] = np.zeros(n, np.int16) if split is None else np.asarray(split, np.int16)
    table["recovered"] = (
        np.zeros(n, np.int16) if recovered is None else np.asarray(recovered, np.int16)
    )
    table["merged"] = np.zeros(n, np.int16) if merged is None else np.asarray(merged, np.int16)
    table["pruned"] = np.zeros(n, np.int16) if pruned is None else np.asarray(pruned, np.int16)
    table["outliers"] = (
        np.zeros(n, np.int32) if outliers is None else np.asarray(outliers, np.int32)
    )
    table["missing"] = np.zeros(n, np.int32) if missing is None else np.asarray(missing, np.int32)
    if noise_std is not None:
        noise_std = np.asarray(noise_std, dtype=np.float32).reshape(n, -1)
        for c, band in enumerate(bands):
            table[f"noise_{band}"] = noise_std[:, c]
    return table


def primary_header(
    header_info: dict,
    axes: tuple[str, str] = ("N,K,C,H,W", "COMPONENTS axis order (numpy); channels first"),
) -> fits.Header:
    """The primary header of a results file: model, bands, unit, input, the peel's cards,
    tfdeblend's version and the axis order ``axes`` (value, comment) of its images."""
    header = fits.Header()
    keys = {
        "model": ("MODEL", "deblending model name"),
        "version": ("MODELVER", "model version"),
        "bands": ("BANDS", "bands, channel order"),
        "bunit": ("BUNIT", "unit of the images (the input's)"),
        "input": ("INPUT", "input file"),
        "n_blends": ("NBLENDS", "number of blends"),
    }
    for key, (card, comment) in keys.items():
        value = header_info.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(value)
        header[card] = (value, comment)
    if header_info.get("peel") is not None:  # a PeelConfig: MAXITER, NVIEWS, SPLIT, ...
        for card, value, comment in header_info["peel"].header_cards():
            header[card] = (value, comment)
    header["TFDBVER"] = (tfdeblend.__version__, "tfdeblend version")
    header["AXES"] = axes
    return header


def image_header(name: str, shape: tuple[int, ...], header_info: dict) -> fits.Header:
    """The header of a float32 image extension ``name`` of ``shape`` (streamed), with
    ``BUNIT`` and ``BANDS`` from ``header_info``."""
    header = fits.Header()
    header["XTENSION"] = "IMAGE"
    header["BITPIX"] = -32
    header["NAXIS"] = len(shape)
    for i, size in enumerate(reversed(shape)):
        header[f"NAXIS{i + 1}"] = int(size)
    header["PCOUNT"] = 0
    header["GCOUNT"] = 1
    header["EXTNAME"] = name
    if header_info.get("bunit"):
        header["BUNIT"] = header_info["bunit"]
    if header_info.get("bands"):
        header["BANDS"] = ",".join(header_info["bands"])
    return header


class ResultWriter:
    """Stream the results of a run into a FITS file, batch by batch, atomically.

    Memory stays bounded by one batch: ``COMPONENTS`` is streamed straight into the file;
    ``RESIDUAL`` and ``CONSERVED`` go to temporary memmaps beside the output and are copied in at
    the end (so the run needs about twice the output's size of free disk space there).
    The output appears only when :meth:`close` succeeds (use it as a context manager).

    Args:
        path: output FITS file.
        n_blends: number of blends that will be written.
        slots: ``K``, component slots per blend (the peel's most iterations).
        bands: band names, channel order.
        stamp_size: side of the stamps, pixels, or their ``(height, width)``.
        header_info: ``model``, ``version``, ``bunit``, ``input``... for the headers.
        overwrite: replace an existing ``path``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_blends: int,
        slots: int,
        bands: tuple[str, ...],
        stamp_size: int | tuple[int, int],
        header_info: dict | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = check_output_path(path, overwrite)
        self.n = int(n_blends)
        self.k = int(slots)
        self.bands = tuple(bands)
        self.height, self.width = (
            (int(stamp_size), int(stamp_size)) if np.ndim(stamp_size) == 0
            else (int(stamp_size[0]), int(stamp_size[1]))
        )
        self.info = {
            **(header_info or {}),
            "bands": self.bands,
            "n_blends": self.n,
        }
        self._written = 0
        self._catalogs: list[Table] = []
        self._blends: list[Table] = []
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_file(self.path, overwrite=overwrite))
        try:
            residual_tmp = self._scratch_file("residual")
            conserved_tmp = self._scratch_file("conserved")
            fits.PrimaryHDU(header=primary_header(self.info)).writeto(self._tmp, overwrite=True)
            c = len(self.bands)
            shape = (self.n, self.k, c, self.height, self.width)
            self._stream = fits.StreamingHDU(
                str(self._tmp), image_header("COMPONENTS", shape, self.info)
            )
            self._residual = np.lib.format.open_memmap(
                residual_tmp, mode="w+", dtype=">f4", shape=(self.n, c, self.height, self.width)
            )
            self._conserved = np.lib.format.open_memmap(
                conserved_tmp, mode="w+", dtype=">f4", shape=shape
            )
        except BaseException as err:
            self.abort(err)
            raise

    def _scratch_file(self, what: str) -> str:
        """A temporary ``.npy`` beside the output, removed when the writer closes or aborts
        (and by the next run writing the same output if this process is killed)."""
        fd, name = tempfile.mkstemp(
            prefix=scratch_prefix(self.path), suffix=f".{what}.npy", dir=self._tmp.parent
        )
        os.close(fd)
        self._stack.callback(Path(name).unlink, missing_ok=True)
        return name

    def _append_image(self, name: str, memmap: np.ndarray) -> None:
        """Append a scratch memmap to the output as image HDU ``name``, chunk by chunk."""
        memmap.flush()
        stream = fits.StreamingHDU(str(self._tmp), image_header(name, memmap.shape, self.info))
        for start in range(0, self.n, SCAN_CHUNK):
            stream.write(np.ascontiguousarray(memmap[start : start + SCAN_CHUNK]))
        stream.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)

    def write_batch(self, result: dict[str, np.ndarray]) -> None:
        """Append one batch of peel results (channels last, as :meth:`Peeler.peel` returns)."""
        components = np.asarray(result["components"], dtype=np.float32)
        n = len(components)
        if self._written + n > self.n:
            raise TfdeblendError("more blends written than announced")
        self._stream.write(np.ascontiguousarray(np.transpose(components, (0, 1, 4, 2, 3)), ">f4"))
        residual = np.transpose(np.asarray(result["residual"], dtype=np.float32), (0, 3, 1, 2))
        self._residual[self._written : self._written + n] = residual
        conserved = np.asarray(result.get("conserved", components), dtype=np.float32)
        self._conserved[self._written : self._written + n] = np.transpose(
            conserved, (0, 1, 4, 2, 3)
        )
        catalog = component_catalog(
            conserved, result["n_components"], result["quality"], self.bands, self._written
        )
        absent = result.get("absent")
        if absent is not None and len(catalog):  # a band with no data: no flux to report
            rows = np.asarray(absent)[np.asarray(catalog["blend_id"]) - self._written]
            for b, band in enumerate(self.bands):
                catalog[f"flux_{band}"][rows[:, b]] = np.nan
        self._catalogs.append(catalog)
        self._blends.append(
            blends_table(
                result["n_components"],
                result["quality"],
                result["counts"],
                self._written,
                noise_std=result.get("noise_std"),
                bands=self.bands,
                split=result.get("split"),
                recovered=result.get("recovered"),
                merged=result.get("merged"),
                pruned=result.get("pruned"),
                outliers=result.get("outliers"),
                missing=result.get("missing"),
            )
        )
        self._written += n

    def close(self) -> None:
        """Finish the file (RESIDUAL, CONSERVED, CATALOG, BLENDS) and move it into place."""
        from astropy.table import vstack

        try:
            if self._written != self.n:
                raise TfdeblendError(f"only {self._written} of {self.n} blends were written")
            self._stream.close()
            c = len(self.bands)
            self._append_image("RESIDUAL", self._residual)
            del self._residual
            self._append_image("CONSERVED", self._conserved)
            del self._conserved
            catalog = (
                vstack(self._catalogs)
                if self._catalogs
                else component_catalog(
                    np.zeros((0, self.k, self.height, self.width, c)), [], [], self.bands
                )
            )
            blends = vstack(self._blends)
            with fits.open(self._tmp, mode="append") as hdul:
                cat = fits.table_to_hdu(catalog)
                cat.name = "CATALOG"
                cat.header["BUNIT"] = self.info.get("bunit") or ""
                tab = fits.table_to_hdu(blends)
                tab.name = "BLENDS"
                hdul.append(cat)
                hdul.append(tab)
        except BaseException as err:
            self.abort(err)
            raise
        self._stack.close()  # removes the residual memmap; renames the FITS file into place

    def abort(self, exc: BaseException | None = None) -> None:
        """Remove the temporary files; the output path is left as it was."""
        with contextlib.suppress(Exception):
            self._stream.close()
        self._residual = None
        self._conserved = None
        error = exc if exc is not None else RuntimeError("aborted")
        with contextlib.suppress(BaseException):
            self._stack.__exit__(type(error), error, error.__traceback__)


def write_results(
    path: str | os.PathLike,
    components: np.ndarray,
    residual: np.ndarray,
    catalog: Table,
    blends: Table,
    header_info: dict | None = None,
    overwrite: bool = False,
    conserved: np.ndarray | None = None,
) -> Path:
    """Write in-memory results to ``path`` atomically (see the module docstring for the HDUs).

    Args:
        path: output FITS file.
        components: ``(N, K, C, H, W)`` channels first, input units.
        residual: ``(N, C, H, W)``.
        catalog: from :func:`component_catalog`.
        blends: from :func:`blends_table`.
        header_info: ``model``, ``version``, ``bands``, ``bunit``, ``input``... for the headers.
        overwrite: replace an existing ``path``.
        conserved: ``(N, K, C, H, W)`` flux-conserving components (the ``CONSERVED`` HDU), if any.
    """
    path = check_output_path(path, overwrite)
    info = dict(header_info or {})
    components = np.asarray(components, dtype=np.float32)
    info.setdefault("n_blends", components.shape[0])
    primary = fits.PrimaryHDU(header=primary_header(info))
    comp = fits.ImageHDU(components, name="COMPONENTS")
    res = fits.ImageHDU(np.asarray(residual, dtype=np.float32), name="RESIDUAL")
    images = [comp, res]
    if conserved is not None:
        images.append(fits.ImageHDU(np.asarray(conserved, dtype=np.float32), name="CONSERVED"))
    for hdu in images:
        if info.get("bunit"):
            hdu.header["BUNIT"] = info["bunit"]
        if info.get("bands"):
            hdu.header["BANDS"] = ",".join(info["bands"])
    cat = fits.table_to_hdu(catalog)
    cat.name = "CATALOG"
    tab = fits.table_to_hdu(blends)
    tab.name = "BLENDS"
    with atomic_file(path, overwrite=overwrite) as tmp:
        fits.HDUList([primary, *images, cat, tab]).writeto(tmp, overwrite=True)
    return path
