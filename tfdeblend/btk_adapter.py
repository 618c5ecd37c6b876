"""A BlendingToolKit (BTK 1.0.9) deblender backed by a tfdeblend model.

:class:`RDNDeblender` plugs the iterative peel into BTK's pipeline so BTK's matchers and metrics
can score it next to BTK's own deblenders::

    deblender = RDNDeblender(max_n_sources=3, model="saved_models/tfdeblend_cpu")
    deblend_batch = deblender(blend_batch)          # btk.blend_batch.DeblendBatch

BTK draws stamps channels first ``(batch, bands, H, W)``, usually 120x120 pixels and in all six
LSST bands. The adapter selects the model's bands (by name, from the survey's filters), crops the
central ``stamp_size`` x ``stamp_size`` pixels the networks were trained on, peels, and pads the
components back to BTK's size with zeros. Smaller BTK stamps are peeled whole, centred in a
model-sized stamp of empty sky with their own noise and cut back, as ``tfdeblend run`` does
(:func:`tfdeblend.run.fill_stamps`). The deblended images are returned in *all* the blend's
bands, zero in bands the model does not see, so BTK's image metrics can compare them with
``isolated_images``. The catalog gives, per component, the flux-weighted centroid in pixels of the
full stamp (``x_peak``, ``y_peak``) and ``ra``, ``dec`` in arcsec relative to the stamp centre
(BTK's convention), plus ``flux_<band>`` and the blend's quality, all measured on the
flux-conserving components (``conserved``, as in ``tfdeblend run``'s catalog); the deblended
images are the noiseless models. Single-pixel outliers (cosmic rays, hot pixels) are replaced
before the peel and left in the residual, as ``tfdeblend run`` does (:mod:`tfdeblend.outliers`).

A model whose networks take the observing conditions (:mod:`tfdeblend.conditioning`) is given
BTK's own: each band's sky noise sigma (``sqrt`` of the survey's mean sky level, the noise BTK
adds) and the FWHM of BTK's PSF, measured on its image at the survey's pixel scale
(:func:`tfdeblend.psf.measure_fwhm`).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from btk.blend_batch import BlendBatch, DeblendBatch, DeblendExample
from btk.deblend import Deblender

from tfdeblend import measure
from tfdeblend.errors import ModelError
from tfdeblend.outliers import deblend_batch
from tfdeblend.run import crop_result, fill_stamps


class RDNDeblender(Deblender):
    """BTK deblender running a tfdeblend SavedModel (see the module docstring).

    Args:
        max_n_sources: most sources returned per blend (components beyond are dropped).
        model: a :class:`tfdeblend.export.DeblendModel` or a model directory; ``None`` for the
            default model.
        batch_size: blends per graph call.
    """

    def __init__(self, max_n_sources: int, model=None, batch_size: int = 32) -> None:
        super().__init__(max_n_sources)
        from tfdeblend.export import DeblendModel, load_model

        self.model = model if isinstance(model, DeblendModel) else load_model(model)
        self.batch_size = int(batch_size)

    # -------------------------------------------------------------- helpers
    def _band_indices(self, blend_batch: BlendBatch) -> list[int]:
        filters = list(blend_batch.survey.available_filters)
        missing = [b for b in self.model.bands if b not in filters]
        if missing:
            raise ModelError(
                f"the blends have bands {','.join(filters)}; the model needs "
                f"{','.join(self.model.bands)}"
            )
        return [filters.index(b) for b in self.model.bands]

    def _crop_slice(self, image_size: int) -> slice:
        """The pixels the model sees: the central model-sized crop of larger BTK stamps (the
        paper's 80x80 of 120x120), the whole of smaller ones (padded, :meth:`_peel`)."""
        size = self.model.stamp_size
        if image_size <= size:
            return slice(0, image_size)
        start = (image_size - size) // 2
        return slice(start, start + size)

    def _peel(self, blend_batch: BlendBatch, indices: list[int]) -> dict[str, np.ndarray]:
        bands = self._band_indices(blend_batch)
        crop = self._crop_slice(blend_batch.image_size)
        images = np.asarray(blend_batch.blend_images[indices], dtype=np.float32)
        images = images[:, bands, crop, crop]  # (n, C, h, w)
        conditions = self._conditions(blend_batch) if self.model.conditioned else {}
        images = np.transpose(images, (0, 2, 3, 1))
        size, height = self.model.stamp_size, images.shape[1]
        if height < size:  # as tfdeblend run: centred in empty sky of the stamp's noise
            images = fill_stamps(images, indices[0], bands=self.model.bands, size=size)[0]
        # as tfdeblend run: single-pixel outliers are replaced for the networks
        out = deblend_batch(self.model, images, batch_size=self.batch_size, **conditions)
        return crop_result(out, height, height)

    def _conditions(self, blend_batch: BlendBatch) -> dict[str, np.ndarray]:
        """BTK's sky noise sigma and PSF FWHM (pixels) in the model's bands."""
        from surveycodex.utilities import mean_sky_level

        from tfdeblend.psf import measure_fwhm

        survey = blend_batch.survey
        filters = list(survey.available_filters)
        scale = survey.pixel_scale.to_value("arcsec")
        noise, fwhm = [], []
        for band in self.model.bands:
            sky = mean_sky_level(survey, survey.get_filter(band)).to_value("electron")
            noise.append(np.sqrt(sky))
            psf = blend_batch.psf[filters.index(band)]
            fwhm.append(measure_fwhm(psf.drawImage(nx=41, ny=41, scale=scale).array))
        return {"noise_sigma": np.asarray(noise, np.float32),
                "psf_fwhm": np.asarray(fwhm, np.float32)}

    def _example(self, blend_batch: BlendBatch, out: dict, i: int) -> DeblendExample:
        n_bands = len(blend_batch.survey.available_filters)
        size = blend_batch.image_size
        bands = self._band_indices(blend_batch)
        crop = self._crop_slice(size)
        n = min(int(out["n_components"][i]), self.max_n_sources)
        components = out["components"][i, :n]  # (n, h, w, C) channels last
        deblended = np.zeros((self.max_n_sources, n_bands, size, size), np.float32)
        for j in range(n):
            deblended[j][
                np.ix_(bands, range(crop.start, crop.stop), range(crop.start, crop.stop))
            ] = np.transpose(components[j], (2, 0, 1))
        # the catalog is measured on the flux-conserving components, as ``tfdeblend run`` does;
        # the deblended images stay the noiseless models (for BTK's image metrics)
        measured = out.get("conserved", out["components"])[i, :n]
        moments = measure.moments(measured) if n else {"x": np.zeros(0), "y": np.zeros(0)}
        x = np.asarray(moments["x"], dtype=np.float64) + crop.start
        y = np.asarray(moments["y"], dtype=np.float64) + crop.start
        pixel_scale = blend_batch.survey.pixel_scale.to_value("arcsec")
        centre = (size - 1) / 2.0
        catalog = Table()
        catalog["ra"] = (x - centre) * pixel_scale
        catalog["dec"] = (y - centre) * pixel_scale
        catalog["x_peak"] = x
        catalog["y_peak"] = y
        flux = measure.fluxes(measured) if n else np.zeros((0, len(bands)))
        for c, band in enumerate(self.model.bands):
            catalog[f"flux_{band}"] = flux[:, c]
        catalog["quality"] = np.full(n, int(out["quality"][i]), dtype=np.int16)
        return DeblendExample(
            self.max_n_sources,
            catalog,
            n_bands,
            size,
            deblended_images=deblended,
            extra_data={"counts": out["counts"][i], "quality": int(out["quality"][i])},
        )

    # -------------------------------------------------------------- BTK API
    def deblend(self, ii: int, blend_batch: BlendBatch) -> DeblendExample:
        """Deblend blend ``ii`` of ``blend_batch``."""
        return self._example(blend_batch, self._peel(blend_batch, [ii]), 0)

    def batch_call(self, blend_batch: BlendBatch, njobs: int = 1, **kwargs) -> DeblendBatch:
        """Deblend the whole batch in batched graph calls (``njobs`` is ignored)."""
        out = self._peel(blend_batch, list(range(blend_batch.batch_size)))
        examples = [self._example(blend_batch, out, i) for i in range(blend_batch.batch_size)]
        return DeblendBatch(
            blend_batch.batch_size,
            self.max_n_sources,
            [e.catalog for e in examples],
            len(blend_batch.survey.available_filters),
            blend_batch.image_size,
            None,
            np.stack([e.deblended_images for e in examples]),
            [e.extra_data for e in examples],
        )
