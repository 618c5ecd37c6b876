"""Survey images in and out: coadd cubes or one file per band, with variance, mask and WCS.

Input (:func:`open_image`) is one of

- a **cube**: one FITS file whose first image HDU is ``(C, H, W)`` (any size, H, W >= 1) with a
  ``BANDS = 'g,r,i'`` header keyword, optional image extensions ``VARIANCE`` and ``MASK`` of the
  same shape, and an optional celestial WCS in the image header;
- **one file per band** in the LSST/HSC coadd (``ExposureF``) layout: an empty primary HDU, then
  the image (HDU 1, with the WCS), the mask (HDU 2) and the variance (HDU 3), the band named by
  the file's ``FILTER`` or ``BAND`` keyword (``i``, ``HSC-I``, ``i_01``...) or by ``bands``.

Pixels that are NaN/inf, or flagged in the mask, are **missing**: never a reason to refuse an
image. Mask planes follow the LSST/HSC convention: a ``MP_<NAME> = bit`` header keyword names
each plane; the planes :data:`DEFAULT_BAD_PLANES` mark a pixel bad by default, and
``mask_bits`` (names or bit numbers) chooses others. A mask without ``MP_`` keywords means
"nonzero = bad" unless ``mask_bits`` says which bits.

Refused with one line (:class:`tfdeblend.errors.DataError`): not FITS, no image, a cube without
``BANDS``, bands that lack one of the model's, a variance or mask of another shape, a variance
that is zero, negative or NaN on a pixel with data, and an image with no valid pixel at all.

Images are read lazily (memmap) region by region (:meth:`ImageSource.read`), so a worker reads
only its tile and memory stays bounded. Axis order: channels first, ``(C, H, W)``, as in the files.

Output (:func:`write_image_results`): one FITS file with the model and residual images (with the
input's WCS) and the object catalog; see :mod:`tfdeblend.scene` for the catalog's columns.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from tfdeblend.config import band_name, parse_band_keyword, parse_bands
from tfdeblend.errors import DataError, TfdeblendError
from tfdeblend.fitsio import image_header, open_fits, physical, primary_header

#: LSST/HSC mask plane bits, used when a mask names none of its planes (``MP_*`` keywords).
LSST_MASK_PLANES: dict[str, int] = {
    "BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7, "NO_DATA": 8,
}
#: Mask planes that make a pixel missing by default.
DEFAULT_BAD_PLANES: tuple[str, ...] = ("BAD", "SAT", "CR", "NO_DATA", "SUSPECT")
#: Rows scanned at a time when checking an image.
SCAN_ROWS = 512
_ALL_BANDS = ("u", "g", "r", "i", "z", "y")


def _open(path: str) -> fits.HDUList:
    """A checked input file opened again to read pixels (memmap, data as stored)."""
    return fits.open(path, memmap=True, mode="readonly", do_not_scale_image_data=True)


def _region(hdu, where) -> np.ndarray:
    """``hdu.data[where]`` in physical values (BSCALE/BZERO applied, BLANK pixels NaN)."""
    return physical(hdu.data[where], hdu.header)


def _image_hdus(hdul) -> list[int]:
    return [
        i for i, hdu in enumerate(hdul)
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
        and hdu.header.get("NAXIS", 0) > 0
    ]


def _shape(header) -> tuple[int, ...]:
    n = int(header["NAXIS"])
    return tuple(int(header[f"NAXIS{i}"]) for i in range(n, 0, -1))


def input_kind(paths: list[str | os.PathLike], stamp_size: int) -> str:
    """``"stamps"`` for a stack of model-sized stamps (or one ``(C, S, S)`` stamp without
    variance or mask), ``"image"`` for anything :func:`open_image` reads.

    Raises:
        DataError: a file that is not FITS or holds no image.
    """
    if len(paths) != 1:
        return "image"
    path = Path(paths[0])
    with open_fits(path) as hdul:
        found = _image_hdus(hdul)
        if not found:
            raise DataError(f"{path} holds no image HDU")
        shape = _shape(hdul[found[0]].header)
        names = {hdul[i].name for i in found}
    if len(shape) == 4:
        return "stamps"
    if len(shape) == 3 and shape[1:] == (stamp_size, stamp_size) and not names & {
        "VARIANCE", "MASK"
    }:
        return "stamps"
    return "image"


def _bad_bits(header, mask_bits) -> int | None:
    """Bit mask of the bad planes, or ``None`` for "nonzero = bad"."""
    planes = {}
    for key in header:
        if key.startswith("MP_"):
            value = header[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 63:
                raise DataError(f"the mask's {key} = {value!r} is not a bit number (0 to 62)")
            planes[key[3:]] = value
    if mask_bits is None:
        if not planes:
            return None
        chosen = [planes[p] for p in DEFAULT_BAD_PLANES if p in planes]
        return int(sum(1 << b for b in set(chosen)))
    bits = 0
    for item in mask_bits:
        item = str(item).strip()
        if item.isdigit():
            bit = int(item)
        elif item.upper() in planes:
            bit = planes[item.upper()]
        elif item.upper() in LSST_MASK_PLANES:
            bit = LSST_MASK_PLANES[item.upper()]
        else:
            known = ", ".join(sorted(planes or LSST_MASK_PLANES))
            raise DataError(f"unknown mask plane {item!r}; known: {known} (or bit numbers)")
        if not 0 <= bit < 63:
            raise DataError(f"mask bit {bit} is out of range")
        bits |= 1 << bit
    return bits


@dataclasses.dataclass
class ImageSource:
    """Where a survey image's pixels are, checked and picklable (workers read their own tiles).

    Attributes:
        kind: ``"cube"`` or ``"bands"``.
        paths: the file(s); for ``bands``, one per entry of :attr:`bands`.
        bands: the bands read, channel order (the model's).
        channels: for a cube, the cube channel of each band.
        shape: ``(H, W)``.
        hdus: per file, the HDU indices of ``(image, variance or -1, mask or -1)``.
        bad_bits: per file, the mask bits that make a pixel missing (``None``: nonzero).
        bunit: the image's ``BUNIT`` (``""`` when absent).
        header: the image header of the first file (WCS, units...).
    """

    kind: str
    paths: tuple[str, ...]
    bands: tuple[str, ...]
    channels: tuple[int, ...]
    shape: tuple[int, int]
    hdus: tuple[tuple[int, int, int], ...]
    bad_bits: tuple[int | None, ...]
    bunit: str
    header: fits.Header

    @property
    def has_variance(self) -> bool:
        """Whether every band has a variance plane."""
        return all(h[1] >= 0 for h in self.hdus)

    def wcs(self):
        """The celestial WCS of the image (``None`` without one)."""
        from astropy.wcs import WCS

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                wcs = WCS(self.header).celestial
            except Exception:  # noqa: BLE001  (a broken WCS is no WCS)
                return None
        return wcs if wcs.has_celestial and wcs.naxis == 2 else None

    def read(
        self, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Pixels of rows ``y0:y1`` and columns ``x0:x1``: ``(image, variance, missing)``.

        Returns:
            ``image`` float32 ``(C, h, w)`` with missing pixels set to 0, ``variance`` float32
            ``(C, h, w)`` (``None`` without a variance plane; missing pixels hold 0), and
            ``missing`` bool ``(C, h, w)``: NaN/inf, masked, (with a variance) a non-finite
            or non-positive variance, or every pixel of a band in the region when all its
            pixels are exactly 0 (a plane of zeros holds no data: real data have noise).
        """
        height, width = self.shape
        y1 = height if y1 is None else y1
        x1 = width if x1 is None else x1
        parts = [self.read_band(c, y0, y1, x0, x1) for c in range(len(self.bands))]
        variances = [p[1] for p in parts]
        return (
            np.stack([p[0] for p in parts]),
            None if any(v is None for v in variances) else np.stack(variances),
            np.stack([p[2] for p in parts]),
        )

    def read_band(
        self, c: int, y0: int, y1: int, x0: int = 0, x1: int | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """One band of :meth:`read`: ``(image (h, w), variance (h, w) or None, missing)``."""
        x1 = self.shape[1] if x1 is None else x1
        image, variance, bad = self._pixels(c, y0, y1, x0, x1)
        if image.size and not image[~bad].any():  # exactly 0 throughout: a filler, no data
            bad[:] = True
        if variance is not None:
            bad |= ~(np.isfinite(variance) & (variance > 0))
            variance[bad] = 0.0
        image[bad] = 0.0
        return image, variance, bad

    def _pixels(self, c: int, y0: int, y1: int, x0: int, x1: int | None):
        """Band ``c``'s region as stored: ``(image float32, variance float32 or None, no_data)``
        where ``no_data`` marks NaN/inf image pixels and the mask's bad bits (the variance is
        not checked here)."""
        path, (hi, hv, hm), bits = (
            (self.paths[c], self.hdus[c], self.bad_bits[c]) if self.kind == "bands"
            else (self.paths[0], self.hdus[0], self.bad_bits[0])
        )
        where = ((self.channels[c],) if self.kind == "cube" else ()) + (
            slice(y0, y1), slice(x0, x1)
        )
        variance = None
        with _open(path) as hdul:
            image = np.array(_region(hdul[hi], where), dtype=np.float32)
            bad = ~np.isfinite(image)
            if hm >= 0:
                mask = _region(hdul[hm], where)
                if mask.dtype.kind == "f":
                    mask = np.nan_to_num(mask, nan=1.0)
                mask = mask.astype(np.int64)
                bad |= (mask != 0) if bits is None else ((mask & bits) != 0)
            if hv >= 0:
                variance = np.array(_region(hdul[hv], where), dtype=np.float32)
        return image, variance, bad


def open_image(
    paths: list[str | os.PathLike] | str | os.PathLike,
    bands: tuple[str, ...] | list[str] | str,
    file_bands: tuple[str, ...] | list[str] | str | None = None,
    mask_bits: list[str] | tuple[str, ...] | None = None,
    check: bool = True,
) -> ImageSource:
    """Open and check a survey image (see the module docstring).

    Args:
        paths: one cube, or one file per band.
        bands: the model's bands: the image must have them all (extra bands are ignored).
        file_bands: with one file per band, the band of each file (else their ``FILTER`` or
            ``BAND`` keywords); with a cube, overrides a missing ``BANDS`` keyword.
        mask_bits: mask planes (names or bit numbers) that make a pixel missing.
        check: scan the pixels for the problems listed in the module docstring.

    Raises:
        DataError: any of the problems listed in the module docstring.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]  # messages name them as given; the source, resolved
    if not paths:
        raise DataError("no input file given")
    bands = parse_bands(bands)
    given = parse_bands(file_bands) if file_bands else None
    opened = []
    try:
        for path in paths:
            opened.append((path, open_fits(path)))
        source = _describe(opened, bands, given, mask_bits)
    finally:
        for _, hdul in opened:
            hdul.close()
    if check:
        _scan(source, {str(p.resolve()): str(p) for p in paths})
    return source


def _named(hdul, names: tuple[str, ...], found: list[int]) -> int:
    for i in found:
        if hdul[i].name.upper() in names:
            return i
    return -1


def _describe(opened, bands, given, mask_bits) -> ImageSource:
    first_path, first = opened[0]
    found = _image_hdus(first)
    if not found:
        raise DataError(f"{first_path} holds no image HDU")
    shape = _shape(first[found[0]].header)
    if len(opened) == 1 and len(shape) == 3:  # a cube
        hi = found[0]
        header = first[hi].header
        height, width = shape[1:]
        if given is not None:
            file_bands = given
        elif "BANDS" in header:
            try:
                file_bands = parse_band_keyword(header["BANDS"])
            except TfdeblendError as err:
                raise DataError(f"{first_path}: bad BANDS header {header['BANDS']!r}: {err}") from err
        else:
            raise DataError(
                f"{first_path}: no BANDS header keyword naming the {shape[0]} channel(s) of the "
                "cube (e.g. BANDS = 'g,r,i'), and no --bands"
            )
        if len(file_bands) != shape[0]:
            raise DataError(
                f"{first_path}: BANDS = {','.join(file_bands)} names {len(file_bands)} band(s) but "
                f"the cube has {shape[0]} channel(s)"
            )
        hv = _named(first, ("VARIANCE", "VAR"), found)
        hm = _named(first, ("MASK",), found)
        for name, index in (("VARIANCE", hv), ("MASK", hm)):
            if index >= 0 and _shape(first[index].header) != shape:
                raise DataError(
                    f"{first_path}: the {name} extension has shape "
                    f"{_shape(first[index].header)}; the image has {shape}"
                )
        _check_bands(first_path, file_bands, bands)
        bits = _bad_bits(first[hm].header, mask_bits) if hm >= 0 else None
        return ImageSource(
            kind="cube", paths=(str(first_path.resolve()),), bands=bands,  # workers elsewhere
            channels=tuple(file_bands.index(b) for b in bands), shape=(height, width),
            hdus=((hi, hv, hm),), bad_bits=(bits,),
            bunit=str(header.get("BUNIT", "")), header=header.copy(),
        )
    # one file per band
    if given is not None and len(given) != len(opened):
        raise DataError(f"--bands names {len(given)} band(s) for {len(opened)} file(s)")
    per_band: dict[str, tuple] = {}
    for k, (path, hdul) in enumerate(opened):
        found = _image_hdus(hdul)
        if not found:
            raise DataError(f"{path} holds no image HDU")
        hi = _named(hdul, ("IMAGE", "SCI"), found)
        hi = found[0] if hi < 0 else hi
        image_shape = _shape(hdul[hi].header)
        if len(image_shape) != 2:
            what = "a stack of stamps" if len(image_shape) == 4 else f"{len(image_shape)}-d"
            raise DataError(
                f"{path}: the image is {what} {image_shape}; with several files each must be one "
                "band's 2-d image"
            )
        header = hdul[hi].header
        if given is not None:
            band = given[k]
        else:
            value = None
            for keyword in ("FILTER", "BAND", "BANDS"):
                for source_header in (header, hdul[0].header):
                    if value is None and source_header.get(keyword) is not None:
                        value = source_header[keyword]
            band = band_name(value) if value is not None else None
            if band is None and value is not None and "," in str(value):
                raise DataError(
                    f"{path}: a 2-d image holds one band, but its {value!r} names several; give "
                    "a cube (C, H, W) or one file per band"
                )
            if band is None:
                raise DataError(
                    f"{path}: no FILTER, BAND or BANDS keyword naming its band"
                    + (f" ({value!r} is not one of {','.join(_ALL_BANDS)})" if value else "")
                    + "; name the files' bands with --bands"
                )
        if band in per_band:
            raise DataError(f"{path} and {per_band[band][0]} are both band {band}")
        rest = [i for i in found if i != hi]
        hm = _named(hdul, ("MASK",), rest)
        hv = _named(hdul, ("VARIANCE", "VAR"), rest)
        if hm < 0 and hv < 0 and len(rest) >= 2:  # unnamed ExposureF: image, mask, variance
            hm, hv = rest[0], rest[1]
        for name, index in (("variance", hv), ("mask", hm)):
            if index >= 0 and _shape(hdul[index].header) != image_shape:
                raise DataError(
                    f"{path}: the {name} has shape {_shape(hdul[index].header)}; the image has "
                    f"{image_shape}"
                )
        bits = _bad_bits(hdul[hm].header, mask_bits) if hm >= 0 else None
        per_band[band] = (str(path), (hi, hv, hm), bits, image_shape, header)
    _check_bands(Path(opened[0][0]).parent, tuple(per_band), bands, files=True)
    shapes = {per_band[b][3] for b in bands}
    if len(shapes) != 1:
        raise DataError(f"the bands' images have different shapes: {sorted(shapes)}")
    first_band = per_band[bands[0]]
    return ImageSource(
        kind="bands", paths=tuple(str(Path(per_band[b][0]).resolve()) for b in bands),
        bands=bands,
        channels=tuple(range(len(bands))), shape=first_band[3],
        hdus=tuple(per_band[b][1] for b in bands), bad_bits=tuple(per_band[b][2] for b in bands),
        bunit=str(first_band[4].get("BUNIT", "")), header=first_band[4].copy(),
    )


def _check_bands(where, file_bands, bands, files: bool = False) -> None:
    missing = [b for b in bands if b not in file_bands]
    if missing:
        what = "the files hold" if files else f"{where} has"
        raise DataError(
            f"{what} bands {','.join(file_bands)}; the model needs {','.join(bands)} "
            f"(missing {','.join(missing)})"
        )


def _scan(source: ImageSource, names: dict[str, str] | None = None) -> None:
    """Refuse an image with no valid pixel, or a variance <= 0 / NaN where there are data.

    ``names``: the files' paths as the user gave them, by :attr:`ImageSource.paths` entry."""
    names = names or {}
    height, width = source.shape
    valid = 0
    for y0 in range(0, height, SCAN_ROWS):
        y1 = min(height, y0 + SCAN_ROWS)
        for c in range(len(source.bands)):
            _, variance, no_data = source._pixels(c, y0, y1, 0, None)
            good = ~no_data
            if variance is not None:
                bad = good & ~(np.isfinite(variance) & (variance > 0))
                if bad.any():
                    row, col = np.argwhere(bad)[0]
                    path = source.paths[c if source.kind == "bands" else 0]
                    raise DataError(
                        f"{names.get(path, path)}: the variance of band {source.bands[c]} is "
                        f"{variance[row, col]} at pixel x={col}, y={y0 + row} (and "
                        f"{int(bad.sum()) - 1} more) where the image has data; a variance "
                        "must be positive (mask such pixels instead)"
                    )
            valid += int(good.sum())
    if valid == 0:
        raise DataError(
            f"{names.get(source.paths[0], source.paths[0])}: the image has no valid pixel "
            "(all NaN/inf or masked)"
        )


def sky_to_pixel_scale(source: ImageSource) -> float | None:
    """Arcsec per pixel from the WCS (or a ``PIXSCALE`` keyword), ``None`` if unknown."""
    if "PIXSCALE" in source.header:
        return float(source.header["PIXSCALE"])
    wcs = source.wcs()
    if wcs is None:
        return None
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)


def _image_header(name: str, shape, source: ImageSource) -> fits.Header:
    """:func:`tfdeblend.fitsio.image_header` with the input's unit, bands and WCS."""
    header = image_header(name, shape, {"bunit": source.bunit, "bands": source.bands})
    wcs = source.wcs()
    if wcs is not None:
        for card in wcs.to_header().cards:
            if card.keyword not in header:
                header.append(card)
    return header


def write_image_results(
    path: str | os.PathLike,
    source: ImageSource,
    model: np.ndarray,
    catalog,
    header_info: dict,
    overwrite: bool = False,
    footprints=None,
) -> Path:
    """Write a whole-image run: primary header, ``MODEL`` and ``RESIDUAL`` images, ``CATALOG``
    and, when given, ``FOOTPRINTS`` (each galaxy's model cut to its bounding box).

    ``RESIDUAL = input - MODEL`` (NaN where the input is missing), computed band by band from
    the input so that memory stays bounded by one band. Both images carry the input's WCS.
    Written atomically; an existing ``path`` is replaced only with ``overwrite``.

    Args:
        path: output FITS file.
        source: the input image.
        model: float32 ``(C, H, W)``, the sum of the galaxies.
        catalog: an astropy Table (see :mod:`tfdeblend.scene`).
        header_info: ``model``, ``version``, ``peel`` (a PeelConfig), ``scene`` (a SceneConfig),
            ``input``, ``detect_colour`` (per band, the typical galaxy's flux share that
            weighted the detection: ``DETCOL_<B>`` cards), ``n_objects``...
        overwrite: replace an existing file.
    """
    from tfdeblend.utils import atomic_file, check_output_path

    path = check_output_path(path, overwrite)
    primary = primary_header(
        {**{key: header_info.get(key) for key in ("model", "version", "peel")},
         "bands": source.bands, "bunit": source.bunit or None,
         "input": str(header_info.get("input", ""))[:68]},
        axes=("C,H,W", "MODEL and RESIDUAL axis order (numpy)"),
    )
    primary["NOBJECTS"] = (int(len(catalog)), "galaxies in CATALOG")
    scene = header_info.get("scene")
    if scene is not None:
        primary["DETTHR"] = (scene.detect_threshold, "detection threshold, sigma of the coadd")
        primary["DEBCONT"] = (scene.deblend_cont, "detection deblending contrast (sep)")
        primary["RESDET"] = (scene.residual_detection, "detection repeated on the residual")
        primary["BKGMESH"] = (scene.background, "background mesh, px (0: sky subtracted)")
        primary["TILESIZE"] = (scene.tile_size, "tile core side, px")
        primary["SCNSEED"] = (scene.seed, "seed of the noise filling stamps")
    colour = header_info.get("detect_colour")
    if colour is not None:  # the detection's band weights: these shares over the variances
        for band, share in zip(source.bands, colour):
            primary[f"DETCOL_{band.upper()}"[:8]] = (round(float(share), 4),
                                                     "typical galaxy flux share, detection")
    height, width = source.shape
    with atomic_file(path, overwrite=overwrite) as tmp:
        fits.PrimaryHDU(header=primary).writeto(tmp, overwrite=True)
        shape = (len(source.bands), height, width)
        stream = fits.StreamingHDU(str(tmp), _image_header("MODEL", shape, source))
        stream.write(np.ascontiguousarray(model, dtype=">f4"))
        stream.close()
        stream = fits.StreamingHDU(str(tmp), _image_header("RESIDUAL", shape, source))
        for c in range(len(source.bands)):
            for y0 in range(0, height, SCAN_ROWS):
                y1 = min(height, y0 + SCAN_ROWS)
                image, _, missing = source.read_band(c, y0, y1)
                residual = np.where(missing, np.nan, image - model[c, y0:y1])
                stream.write(np.ascontiguousarray(residual, dtype=">f4"))
        stream.close()
        table = fits.table_to_hdu(catalog)
        table.name = "CATALOG"
        if source.bunit:
            table.header["BUNIT"] = source.bunit
        extra = []
        if footprints is not None:
            extra = [_table_hdu(footprints)]
            extra[0].name = "FOOTPRINTS"
            extra[0].header["AXES"] = ("C,H,W", "order of each flattened model cut-out")
        with fits.open(tmp, mode="append") as hdul:
            hdul.append(table)
            for hdu in extra:
                hdul.append(hdu)
    return path


def _table_hdu(table) -> fits.BinTableHDU:
    """``fits.table_to_hdu``, also for a table with no rows whose columns hold arrays of any
    length (astropy cannot type an empty object column: they become float32 ``PE()``)."""
    ragged = [name for name in table.colnames if table[name].dtype == object]
    if len(table) or not ragged:
        return fits.table_to_hdu(table)
    hdu = fits.table_to_hdu(table[[n for n in table.colnames if n not in ragged]])
    columns = hdu.columns
    for name in ragged:
        columns = columns + fits.Column(name=name, format="PE()", array=np.empty(0, object))
    return fits.BinTableHDU.from_columns(columns, header=hdu.header)


def write_cube(
    path: str | os.PathLike,
    image: np.ndarray,
    bands: tuple[str, ...] | list[str] | str,
    variance: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    mask_planes: dict[str, int] | None = None,
    header: fits.Header | dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an image cube in the layout :func:`open_image` reads (a convenience for users
    whose images are numpy arrays, e.g. from the LSST/HSC butler).

    Args:
        path: FITS file to write (atomically).
        image: ``(C, H, W)`` sky-subtracted image, channels first.
        bands: band of each channel.
        variance: ``(C, H, W)`` per-pixel variance (the ``VARIANCE`` extension), optional.
        mask: ``(C, H, W)`` integer bit mask (the ``MASK`` extension), optional.
        mask_planes: ``{plane name: bit}`` written as the mask's ``MP_<NAME>`` keywords (e.g.
            :data:`LSST_MASK_PLANES`).
        header: extra primary header cards (a WCS's ``to_header()``, ``BUNIT``...).
        overwrite: replace an existing file.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "cube.fits")
        >>> _ = write_cube(path, np.zeros((3, 20, 30), "float32"), "g,r,i",
        ...                variance=np.ones((3, 20, 30), "float32"))
        >>> open_image(path, "g,r,i").shape
        (20, 30)
    """
    from tfdeblend.utils import atomic_file, check_output_path

    path = check_output_path(path, overwrite)
    bands = parse_bands(bands)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != len(bands):
        raise TfdeblendError(f"image must be (C, H, W) with C = {len(bands)}, not {image.shape}")
    primary = fits.Header()
    for key, value in dict(header or {}).items():
        primary[key] = value
    primary["BANDS"] = ",".join(bands)
    hdus = [fits.PrimaryHDU(image, header=primary)]
    if variance is not None:
        hdus.append(fits.ImageHDU(np.asarray(variance, dtype=np.float32), name="VARIANCE"))
    if mask is not None:
        extension = fits.ImageHDU(np.asarray(mask, dtype=np.int32), name="MASK")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # long plane names become HIERARCH cards
            for name, bit in (mask_planes or {}).items():
                extension.header[f"MP_{name}"] = int(bit)
        hdus.append(extension)
    for extension in hdus[1:]:
        if extension.data.shape != image.shape:
            raise TfdeblendError(
                f"{extension.name} has shape {extension.data.shape}; the image {image.shape}"
            )
    with atomic_file(path, overwrite=overwrite) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return path
