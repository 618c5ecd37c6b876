"""SavedModel export in the TF Serving layout, and loading it back.

A *model directory* is what TF Serving serves::

    NAME/<integer version>/saved_model.pb
                          variables/
                          assets.extra/tfdeblend.yaml      bands, stamp size, configs, versions
                          assets.extra/deblender.keras     the trained networks (Keras 3 format)
                          assets.extra/classifier.keras

Signatures (all take ``images``: float32 ``[batch, H, W, bands]``, channels last, in any linear
flux unit; every output is in the input's units):

- ``serving_default``: the whole iterative peel (:class:`tfdeblend.deblend.Peeler`):
  ``components [batch, K, H, W, bands]``, ``residual [batch, H, W, bands]``,
  ``counts [batch, K + 1]`` int32 (``-1`` where a step was not run), ``quality [batch]`` int32
  (2 high, 1 medium, 0 low), ``n_components [batch]`` int32, ``split``, ``recovered`` and
  ``merged [batch]`` int32 (what the steps after the peel did), ``conserved [batch, K, H, W,
  bands]`` (flux-conserving components, :func:`tfdeblend.deblend.conserve_flux`) and
  ``noise_std [batch, bands]``.
- ``deblend_one``: one RDN pass, ``component [batch, H, W, bands]``.
- ``count``: the classifier, ``count [batch]`` int32 and ``probabilities [batch, 4]``.

A model whose networks take the observing conditions (:mod:`tfdeblend.conditioning`; version 10
of ``tfdeblend_cpu`` on) runs the three signatures above with its defaults: each band's noise
estimated from the image and the PSF FWHM of its nominal survey (``conditions`` in its
metadata). It also has ``peel_conditions``, ``deblend_one_conditions`` and
``count_conditions``, which take ``images`` plus ``noise_sigma [batch, bands]`` (sky noise
sigma in the images' units) and ``psf_fwhm [batch, bands]`` (PSF FWHM in pixels); a NaN entry
means "unknown" and takes the default.

Example:
    >>> from tfdeblend.export import export_model, load_model  # doctest: +SKIP
    >>> path = export_model("runs/joint", "saved_models/mine")  # doctest: +SKIP
    >>> model = load_model("saved_models/mine")  # the highest version  # doctest: +SKIP
    >>> out = model.deblend(images)  # images (N, 80, 80, 3)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import tfdeblend
from tfdeblend.errors import ModelError, TfdeblendError
from tfdeblend.peel_config import POST_PEEL_COUNTS, PeelConfig
from tfdeblend.utils import atomic_dir

#: Environment variable naming the default model directory.
MODEL_ENV = "TFDEBLEND_MODEL"
#: File (inside ``assets.extra``) that marks a tfdeblend SavedModel.
METADATA_NAME = "tfdeblend.yaml"
SIGNATURES = ("serving_default", "deblend_one", "count")
#: Extra signatures of a conditioned model: the same three with noise_sigma and psf_fwhm inputs.
CONDITION_SIGNATURES = {
    "serving_default": "peel_conditions",
    "deblend_one": "deblend_one_conditions",
    "count": "count_conditions",
}


def nominal_conditions(bands: tuple[str, ...], survey: str = "LSST") -> dict:
    """The default conditions a conditioned model stores: ``survey``, ``pixel_scale`` (arcsec)
    and ``psf_fwhm`` per band in pixels, the survey's nominal seeing (as simulated)."""
    from tfdeblend.simulate import band_conditions, survey_info

    pixel_scale = float(survey_info(survey).pixel_scale.to_value("arcsec"))
    fwhm = band_conditions(survey, tuple(bands), 1.0, 1.0)["psf_fwhm"] / pixel_scale
    return {"survey": survey, "pixel_scale": pixel_scale,
            "psf_fwhm": [round(float(v), 4) for v in fwhm]}


@dataclasses.dataclass
class ModelBundle:
    """The two trained networks and what they were trained on.

    Attributes:
        deblender: RDN Keras model, ``(None, H, W, C)`` -> same.
        classifier: classifier Keras model, ``(None, H, W, C)`` -> ``(None, 4)`` logits.
        bands: band names, in channel order.
        stamp_size: side of the stamps, pixels.
        configs: YAML-able dict of configurations (``deblender``, ``classifier``, ``train``...).
    """

    deblender: Any
    classifier: Any
    bands: tuple[str, ...] = ("g", "r", "i")
    stamp_size: int = 80
    configs: dict = dataclasses.field(default_factory=dict)


def default_model_dir() -> Path:
    """The model ``tfdeblend run`` uses by default.

    ``$TFDEBLEND_MODEL`` when set, else the model shipped in the repository,
    ``<repo>/saved_models/tfdeblend_cpu``.

    Raises:
        ModelError: the directory does not exist.
    """
    env = os.environ.get(MODEL_ENV)
    path = (
        Path(env)
        if env
        else Path(tfdeblend.__file__).resolve().parents[1] / "saved_models" / ("tfdeblend_cpu")
    )
    if not path.exists():
        where = f"${MODEL_ENV}" if env else "the repository"
        raise ModelError(
            f"default model {path} (from {where}) does not exist; pass --model MODEL_DIR "
            "or export one with `tfdeblend export`"
        )
    return path


def _network_from_export(source: Path, role: str):
    """``(run path, RunInfo, network)`` of ``role`` in an exported model directory (``NAME``,
    ``NAME/<version>``, or the ``.keras`` file in its ``assets.extra/``).

    The RunInfo carries the export's bands and stamp size, and the configuration of the run the
    network came from (recorded in ``tfdeblend.yaml``), so a re-export keeps its provenance.
    """
    import keras

    import tfdeblend.models.layers  # noqa: F401  (registers the custom layers)
    from tfdeblend.training.rundir import RunInfo

    version_dir = source.parent.parent if source.is_file() else resolve_version_dir(source)
    metadata = _read_metadata(version_dir)
    path = version_dir / "assets.extra" / f"{role}.keras"
    if source.is_file() and source.resolve() != path.resolve():
        raise ModelError(f"{source} is not the {role} of an exported model ({path})")
    try:
        network = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # missing or corrupt file
        raise ModelError(f"cannot load {path}: {err}") from err
    configs = metadata.get("configs") or {}
    train = dict(configs.get(f"{role}_train") or {})
    train.setdefault("models", {})
    train["models"] = {**train["models"], role: configs.get(role)}
    info = RunInfo(
        path=version_dir,
        bands=tuple(metadata["bands"]),
        stamp_size=int(metadata["stamp_size"]),
        preset=str(train.get("preset")),
        config=train,
    )
    origin = configs.get(f"{role}_run") or str(version_dir)
    return Path(origin), info, network


def _is_export(source: Path) -> bool:
    """Whether ``source`` names an exported model (or a ``.keras`` file inside one)."""
    if source.is_file():
        return (source.parent / METADATA_NAME).is_file() and source.parent.name == "assets.extra"
    return source.is_dir() and not (source / "config.yaml").is_file() and (
        (source / "saved_model.pb").is_file()
        or any(p.name.isdigit() and (p / "saved_model.pb").is_file() for p in source.iterdir())
    )


def _bundle_from_runs(run_dir, deblender_run, classifier_run) -> ModelBundle:
    from tfdeblend.training.rundir import load_run

    runs = {}
    sources = {}
    for role, path in (("deblender", deblender_run), ("classifier", classifier_run)):
        source = path if path is not None else run_dir
        if source is None:
            raise TfdeblendError(f"no run directory given for the {role}")
        if _is_export(Path(source)):
            runs[role] = _network_from_export(Path(source), role)
            sources[role] = str(Path(source).resolve())
            continue
        if Path(source).is_file():
            raise ModelError(
                f"{source} is a file; give a run directory or an exported model directory"
            )
        info = load_run(source)
        model = getattr(info, role, None)
        if model is None:
            raise ModelError(f"run directory {source} holds no {role}.keras")
        runs[role] = (Path(source), info, model)
    (d_dir, d_info, deblender), (c_dir, c_info, classifier) = runs["deblender"], runs["classifier"]
    if tuple(d_info.bands) != tuple(c_info.bands):
        raise ModelError(
            f"the deblender ({','.join(d_info.bands)}) and the classifier "
            f"({','.join(c_info.bands)}) were trained on different bands"
        )
    if int(d_info.stamp_size) != int(c_info.stamp_size):
        raise ModelError(
            f"the deblender ({d_info.stamp_size} px) and the classifier ({c_info.stamp_size} px) "
            "were trained on different stamp sizes"
        )

    def plain(config):
        if config is None:
            return None
        return config.to_dict() if hasattr(config, "to_dict") else config

    configs = {
        "deblender_run": str(d_dir.resolve()),
        "classifier_run": str(c_dir.resolve()),
        "deblender": d_info.model_config("deblender") if hasattr(d_info, "model_config") else None,
        "classifier": (
            c_info.model_config("classifier") if hasattr(c_info, "model_config") else None
        ),
        "deblender_train": plain(d_info.config),
        "classifier_train": plain(c_info.config),
    }
    for role, source in sources.items():  # taken from an earlier export
        configs[f"{role}_export"] = source
    # the training curves of each network's last run travel with the model (run directories
    # are often deleted; an earlier export passes on the history it holds)
    for role, (run, info, _) in runs.items():
        if role in sources:
            history = (info.config or {}).get("history")
        else:
            path = Path(run) / "history.json"
            history = json.loads(path.read_text()) if path.is_file() else None
        if history:
            configs[f"{role}_train"] = {**(configs[f"{role}_train"] or {}), "history": history}
    return ModelBundle(
        deblender=deblender,
        classifier=classifier,
        bands=tuple(d_info.bands),
        stamp_size=int(d_info.stamp_size),
        configs=configs,
    )


def _check_model_shapes(bundle: ModelBundle) -> None:
    expected = (bundle.stamp_size, bundle.stamp_size, len(bundle.bands))
    for role in ("deblender", "classifier"):
        shape = tuple(getattr(bundle, role).inputs[0].shape[1:])
        if shape != expected:
            raise ModelError(
                f"the {role} takes images of shape {shape}, not {expected} "
                f"({bundle.stamp_size} px, bands {','.join(bundle.bands)})"
            )
    logits = tuple(bundle.classifier.outputs[0].shape[1:])
    if logits != (4,):
        raise ModelError(f"the classifier returns shape {logits}, not (4,) logits")


def next_version(out_dir: str | os.PathLike) -> int:
    """Next free integer version under ``out_dir`` (1 for a new directory)."""
    out_dir = Path(out_dir)
    versions = (
        [int(p.name) for p in out_dir.iterdir() if p.name.isdigit()] if out_dir.is_dir() else []
    )
    return max(versions, default=0) + 1


def build_serving_module(bundle: ModelBundle, config: PeelConfig, default_psf=None):
    """A :class:`tf.Module` with the serving functions (see the module docstring)."""
    import tensorflow as tf

    from tfdeblend.deblend import Peeler

    peeler = Peeler(bundle.deblender, bundle.classifier, config, default_psf=default_psf)
    spec = tf.TensorSpec(
        [None, bundle.stamp_size, bundle.stamp_size, len(bundle.bands)], tf.float32, name="images"
    )
    noise = tf.TensorSpec([None, len(bundle.bands)], tf.float32, name="noise_sigma")
    psf = tf.TensorSpec([None, len(bundle.bands)], tf.float32, name="psf_fwhm")

    @tf.function(input_signature=[spec])
    def serving_default(images):
        return peeler.peel(images)

    @tf.function(input_signature=[spec])
    def deblend_one(images):
        return {"component": peeler.deblend_one(images)}

    @tf.function(input_signature=[spec])
    def count(images):
        return peeler.count(images)

    module = tf.Module(name="tfdeblend")
    module.peeler = peeler
    module.serving_default = serving_default
    module.deblend_one = deblend_one
    module.count = count
    if peeler.conditioned:

        @tf.function(input_signature=[spec, noise, psf])
        def peel_conditions(images, noise_sigma, psf_fwhm):
            return peeler.peel(images, noise_sigma, psf_fwhm)

        @tf.function(input_signature=[spec, noise, psf])
        def deblend_one_conditions(images, noise_sigma, psf_fwhm):
            return {"component": peeler.deblend_one(images, noise_sigma, psf_fwhm)}

        @tf.function(input_signature=[spec, noise, psf])
        def count_conditions(images, noise_sigma, psf_fwhm):
            return peeler.count(images, noise_sigma, psf_fwhm)

        module.peel_conditions = peel_conditions
        module.deblend_one_conditions = deblend_one_conditions
        module.count_conditions = count_conditions
    return module


def serving_signatures(module) -> dict:
    """The signatures of a :func:`build_serving_module` module, by name."""
    names = [*SIGNATURES, *CONDITION_SIGNATURES.values()]
    return {name: getattr(module, name) for name in names if hasattr(module, name)}


def export_model(
    run_dir_or_models,
    out_dir: str | os.PathLike,
    version: int | None = None,
    deblender_run: str | os.PathLike | None = None,
    classifier_run: str | os.PathLike | None = None,
    peel: PeelConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a deblender + classifier pair as a TF Serving SavedModel.

    Args:
        run_dir_or_models: a phase-2 run directory (holding ``deblender.keras`` and
            ``classifier.keras``), a :class:`ModelBundle`, or ``None`` when both
            ``deblender_run`` and ``classifier_run`` are given.
        out_dir: the model base directory (``NAME``); the export goes to ``NAME/<version>``.
        version: integer version; default the next free one (1 for a new directory).
        deblender_run: take the deblender from this run directory instead, or from an
            exported model (``NAME``, ``NAME/<version>`` or its ``assets.extra/deblender.keras``).
        classifier_run: the same for the classifier.
        peel: how the exported peel runs (stored in the model's metadata); default
            :class:`tfdeblend.peel_config.PeelConfig`'s defaults, the shipped model's peel.
        overwrite: replace an existing ``NAME/<version>``.

    Returns:
        The version directory written.

    Raises:
        ModelError: missing or mismatched networks. TfdeblendError: the version exists.
    """
    peel = PeelConfig() if peel is None else peel
    if isinstance(run_dir_or_models, ModelBundle):
        bundle = run_dir_or_models
    else:
        bundle = _bundle_from_runs(run_dir_or_models, deblender_run, classifier_run)
    _check_model_shapes(bundle)

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TfdeblendError(f"{out_dir} exists and is not a directory")
    if version is None:
        version = next_version(out_dir)
    if int(version) < 1:
        raise TfdeblendError(f"version must be a positive integer, not {version}")
    target = out_dir / str(int(version))
    if target.exists() and not overwrite:
        raise TfdeblendError(f"{target} already exists; pass --overwrite to replace it")

    import tensorflow as tf

    from tfdeblend.conditioning import is_conditioned

    conditioned = is_conditioned(bundle.deblender) or is_conditioned(bundle.classifier)
    conditions = nominal_conditions(bundle.bands) if conditioned else None
    module = build_serving_module(
        bundle, peel, default_psf=conditions["psf_fwhm"] if conditions else None
    )
    with atomic_dir(target) as tmp:
        signatures = serving_signatures(module)
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        extra = tmp / "assets.extra"
        extra.mkdir()
        for role in ("deblender", "classifier"):
            # the network alone: a phase-1 run's file also holds the optimizer state (3x larger)
            _save_network(getattr(bundle, role), extra / f"{role}.keras")
        metadata = {
            "format": "tfdeblend-savedmodel",
            "name": out_dir.name,
            "version": int(version),
            "bands": list(bundle.bands),
            "stamp_size": int(bundle.stamp_size),
            "peel": peel.to_dict(),
            "tfdeblend_version": tfdeblend.__version__,
            "tensorflow_version": tf.__version__,
            "signatures": list(signatures),
            **({"conditions": conditions} if conditions else {}),
            "configs": _plain(bundle.configs),
        }
        (extra / METADATA_NAME).write_text(yaml.safe_dump(metadata, sort_keys=False))
    return target


def _save_network(model, path: Path) -> None:
    """Save a Keras network without optimizer state or compile config (inference only)."""
    import keras

    plain = keras.Model(model.inputs, model.outputs, name=model.name)
    plain.save(path)


def _plain(value):
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def resolve_version_dir(model_dir: str | os.PathLike) -> Path:
    """The version directory of ``model_dir`` (itself, or its highest integer version).

    Raises:
        ModelError: missing directory, or not a tfdeblend SavedModel.
    """
    path = Path(model_dir)
    if not path.exists():
        raise ModelError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ModelError(f"model directory {path} is not a directory")
    if not (path / "saved_model.pb").exists():
        versions = sorted(
            (
                int(p.name)
                for p in path.iterdir()
                if p.name.isdigit() and (p / "saved_model.pb").exists()
            ),
        )
        if not versions:
            raise ModelError(
                f"{path} is not a model directory: no saved_model.pb and no <version>/saved_model.pb "
                "inside (export one with `tfdeblend export`)"
            )
        path = path / str(versions[-1])
    if not (path / "assets.extra" / METADATA_NAME).exists():
        raise ModelError(
            f"{path} is a SavedModel but not a tfdeblend model (no assets.extra/{METADATA_NAME})"
        )
    return path


class DeblendModel:
    """A loaded tfdeblend SavedModel.

    Attributes:
        path: the version directory.
        name: the model name (the base directory's name).
        version: integer version.
        bands: band names, channel order.
        stamp_size: side of the stamps, pixels.
        peel_config: how its peel runs (:meth:`PeelConfig.from_metadata`: models exported
            before a step existed run without it).
        metadata: the whole ``tfdeblend.yaml`` dict.
    """

    def __init__(self, path: Path, metadata: dict, saved_model) -> None:
        self.path = path
        self.metadata = metadata
        self.name = str(metadata.get("name") or path.parent.name)
        self.version = int(metadata.get("version") or (path.name if path.name.isdigit() else 0))
        self.bands = tuple(metadata["bands"])
        self.stamp_size = int(metadata["stamp_size"])
        self.peel_config = PeelConfig.from_metadata(metadata)
        #: the nominal conditions of a conditioned model (``None``: its networks take none)
        self.conditions = metadata.get("conditions")
        self._saved = saved_model
        names = [*SIGNATURES, *(CONDITION_SIGNATURES.values() if self.conditions else ())]
        self._signatures = {name: saved_model.signatures[name] for name in names}

    def __repr__(self) -> str:
        return (
            f"DeblendModel(name={self.name!r}, version={self.version}, "
            f"bands={','.join(self.bands)}, stamp_size={self.stamp_size})"
        )

    def check_images(self, images: np.ndarray) -> np.ndarray:
        """Check a channels-last batch ``(N, H, W, C)`` against the model; float32 copy."""
        images = np.asarray(images, dtype=np.float32)
        expected = (self.stamp_size, self.stamp_size, len(self.bands))
        if images.ndim != 4 or images.shape[1:] != expected:
            raise TfdeblendError(
                f"images have shape {images.shape}; the model expects (N, {expected[0]}, "
                f"{expected[1]}, {expected[2]}) channels last (bands {','.join(self.bands)})"
            )
        return images

    @property
    def removes_outliers(self) -> bool:
        """Whether the peel removes single-pixel outliers itself (output ``outliers``; models
        exported since version 11, :func:`tfdeblend.normalize.remove_outliers`)."""
        return "outliers" in self._signatures["serving_default"].structured_outputs

    @property
    def conditioned(self) -> bool:
        """Whether the networks take the observing conditions (noise and PSF per band)."""
        return bool(self.conditions)

    def _condition_array(self, values, n: int, what: str) -> np.ndarray:
        """``values`` (``(N, C)``, ``(C,)``, a number or ``None`` = NaN) as float32 ``(N, C)``."""
        shape = (n, len(self.bands))
        if values is None:
            return np.full(shape, np.nan, np.float32)
        array = np.asarray(values, dtype=np.float32)
        try:
            return np.ascontiguousarray(np.broadcast_to(array, shape))
        except ValueError as err:
            raise TfdeblendError(
                f"{what} has shape {array.shape}; expected ({n}, {len(self.bands)}) or "
                f"({len(self.bands)},)"
            ) from err

    def _run(
        self, signature: str, images: np.ndarray, batch_size: int, noise_sigma=None, psf_fwhm=None
    ) -> dict[str, np.ndarray]:
        import tensorflow as tf

        if int(batch_size) < 1:
            raise TfdeblendError(f"batch size must be positive, not {batch_size}")
        images = self.check_images(images)
        inputs = {"images": images}
        if self.conditioned and (noise_sigma is not None or psf_fwhm is not None):
            signature = CONDITION_SIGNATURES[signature]
            inputs["noise_sigma"] = self._condition_array(noise_sigma, len(images), "noise_sigma")
            inputs["psf_fwhm"] = self._condition_array(psf_fwhm, len(images), "psf_fwhm")
        function = self._signatures[signature]
        parts = []
        for start in range(0, len(images), batch_size):
            out = function(**{k: tf.constant(v[start : start + batch_size])
                              for k, v in inputs.items()})
            parts.append({key: value.numpy() for key, value in out.items()})
        if not parts:
            out = function(**{k: tf.constant(v) for k, v in inputs.items()})
            return {key: value.numpy() for key, value in out.items()}
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def deblend(
        self, images: np.ndarray, batch_size: int = 32, noise_sigma=None, psf_fwhm=None
    ) -> dict[str, np.ndarray]:
        """Iterative peel of ``images`` ``(N, H, W, C)`` (any linear unit).

        ``noise_sigma`` (sky noise sigma per band, the images' units) and ``psf_fwhm`` (PSF
        FWHM per band, pixels), ``(N, C)`` or ``(C,)``, feed a conditioned model (NaN entries:
        its defaults); a model without conditions ignores them.

        Returns:
            ``components (N, K, H, W, C)``, ``residual (N, H, W, C)``, ``counts (N, K + 1)``,
            ``quality (N,)``, ``n_components (N,)``, ``split (N,)`` (1 where a component was
            split), ``recovered (N,)`` (1 where the residual detection added one), ``merged (N,)``
            (components merged into a brighter one), ``pruned (N,)`` (components dropped as not
            significant), ``conserved (N, K, H, W, C)`` and ``noise_std (N, C)`` as numpy arrays,
            input units.
        """
        out = self._run("serving_default", images, batch_size, noise_sigma, psf_fwhm)
        for key in POST_PEEL_COUNTS:  # 0 where exported before the step existed
            if key not in out:
                out[key] = np.zeros(len(out["quality"]), np.int32)
        if "conserved" not in out:  # exported before the flux-conserving step existed
            from tfdeblend.deblend import conserve_flux

            parts = [
                conserve_flux(out["components"][i : i + batch_size],
                              out["residual"][i : i + batch_size])
                for i in range(0, max(len(out["residual"]), 1), batch_size)
            ]
            for key in ("conserved", "noise_std"):
                out[key] = np.concatenate([p[key].numpy() for p in parts])
        return out

    def deblend_one(
        self, images: np.ndarray, batch_size: int = 32, noise_sigma=None, psf_fwhm=None
    ) -> np.ndarray:
        """One RDN pass: the brightest galaxy of each image ``(N, H, W, C)``, input units
        (conditions as :meth:`deblend`)."""
        return self._run("deblend_one", images, batch_size, noise_sigma, psf_fwhm)["component"]

    def count(
        self, images: np.ndarray, batch_size: int = 32, noise_sigma=None, psf_fwhm=None
    ) -> dict[str, np.ndarray]:
        """Classifier count (``count (N,)``) and ``probabilities (N, 4)`` (conditions as
        :meth:`deblend`)."""
        return self._run("count", images, batch_size, noise_sigma, psf_fwhm)


def _read_metadata(version_dir: Path) -> dict:
    """``assets.extra/tfdeblend.yaml`` of a version directory, checked for its key fields.

    Raises:
        ModelError: unreadable, without bands or stamp size, or an invalid peel.
    """
    try:
        metadata = yaml.safe_load((version_dir / "assets.extra" / METADATA_NAME).read_text())
        for key in ("bands", "stamp_size"):
            metadata[key]  # noqa: B018
        PeelConfig.from_metadata(metadata)
    except (OSError, yaml.YAMLError, KeyError, TypeError, TfdeblendError) as err:
        raise ModelError(f"{version_dir}/assets.extra/{METADATA_NAME} is corrupt: {err}") from err
    return metadata


def read_model_metadata(model_dir: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """``(version directory, tfdeblend.yaml mapping)`` of a model, without loading TensorFlow.

    Args:
        model_dir: as for :func:`load_model`.

    Raises:
        ModelError: missing, foreign or corrupt model directory.
    """
    path = resolve_version_dir(model_dir if model_dir is not None else default_model_dir())
    return path, _read_metadata(path)


def load_model(model_dir: str | os.PathLike | None = None) -> DeblendModel:
    """Load a model exported by :func:`export_model`.

    Args:
        model_dir: the base directory (the highest version is used) or a version directory;
            ``None`` for :func:`default_model_dir`.

    Raises:
        ModelError: missing, foreign or unreadable model directory.
    """
    path, metadata = read_model_metadata(model_dir)
    import tensorflow as tf

    try:
        saved = tf.saved_model.load(str(path))
    except Exception as err:  # noqa: BLE001  (any load failure is the model's fault)
        raise ModelError(
            f"cannot load the SavedModel in {path}: {str(err).splitlines()[0]}"
        ) from err
    wanted = [*SIGNATURES, *(CONDITION_SIGNATURES.values() if metadata.get("conditions") else ())]
    missing = [name for name in wanted if name not in saved.signatures]
    if missing:
        raise ModelError(f"{path} lacks the signature(s) {', '.join(missing)}")
    return DeblendModel(path, metadata, saved)


def rest_request_body(
    fits_path: str | os.PathLike,
    signature_name: str = "serving_default",
    first: int | None = None,
    bands: tuple[str, ...] | None = None,
) -> dict:
    """A TF Serving REST ``:predict`` body (row format) for the stamps of a FITS file.

    Args:
        fits_path: blends FITS file, ``(N, C, H, W)`` or ``(C, H, W)`` (see :mod:`tfdeblend.fitsio`).
        signature_name: ``serving_default``, ``deblend_one`` or ``count``.
        first: only the first ``first`` stamps.
        bands: the model's bands, to check the file's ``BANDS`` header against.

    Returns:
        ``{"signature_name": ..., "instances": [stamp (H, W, C) as nested lists, ...]}``;
        ``json.dumps`` it and POST it to ``/v1/models/NAME:predict``.
    """
    from tfdeblend.fitsio import read_blends

    images, _, _ = read_blends(fits_path, bands=bands, channels_last=True)
    if first is not None:
        images = images[:first]
    return {"signature_name": signature_name, "instances": images.tolist()}
