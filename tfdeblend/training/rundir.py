"""Run directories: the final models and the configuration they were trained with.

``RUN_DIR/config.yaml`` holds ``kind: tfdeblend-run``, the tfdeblend version, the training
configuration, each model's architecture configuration, ``bands``, ``stamp_size``, ``preset`` and a
summary of the dataset; ``RUN_DIR/deblender.keras`` and/or ``classifier.keras`` the final models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import keras
import yaml

from tfdeblend import __version__
from tfdeblend.errors import ModelError

MODEL_NAMES: tuple[str, ...] = ("deblender", "classifier")
RUN_KIND = "tfdeblend-run"
_MANIFEST_SUMMARY = ("path", "kind", "bands", "stamp_size", "max_sources", "count", "seed")


@dataclasses.dataclass
class RunInfo:
    """What :func:`load_run` returns.

    Attributes:
        path: the run directory.
        bands: bands the models were trained on (channel order).
        stamp_size: input side, pixels.
        preset: model preset name.
        config: the whole ``config.yaml`` as a dict.
        deblender: the RDN (``None`` if the run has none).
        classifier: the VGG-16 (``None`` if the run has none).
    """

    path: Path
    bands: tuple[str, ...]
    stamp_size: int
    preset: str
    config: dict[str, Any]
    deblender: keras.Model | None = None
    classifier: keras.Model | None = None

    def model_config(self, name: str) -> dict[str, Any] | None:
        """Architecture configuration dict of model ``name`` (``RDNConfig``/``ClassifierConfig``)."""
        return (self.config.get("models") or {}).get(name)


def save_keras_atomic(model: keras.Model, path: str | os.PathLike) -> None:
    """``model.save(path)`` through a temporary file, so ``path`` is never half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".keras", dir=path.parent)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_run(
    run_dir: str | os.PathLike,
    models: dict[str, keras.Model],
    config: Any,
    model_configs: dict[str, Any],
    dataset_manifest: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.yaml`` and ``<name>.keras`` for each model into ``run_dir``.

    Args:
        run_dir: the run directory (created if needed; other files are kept).
        models: ``{"deblender": model, "classifier": model}`` (either or both).
        config: the :class:`~tfdeblend.training.config.TrainConfig` (or a dict).
        model_configs: ``{name: RDNConfig | ClassifierConfig | dict}`` for each model.
        dataset_manifest: the training dataset's manifest (summarized) incl. ``bands`` and
            ``stamp_size``.
        extra: more top-level keys for ``config.yaml``.

    Returns:
        The run directory path.
    """
    run_dir = Path(run_dir)
    unknown = sorted(set(models) - set(MODEL_NAMES))
    if unknown:
        raise ModelError(f"unknown model name(s) {unknown}; use {MODEL_NAMES}")
    manifest = dict(dataset_manifest or {})
    train = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    model_dicts = {
        k: (v.to_dict() if hasattr(v, "to_dict") else dict(v)) for k, v in model_configs.items()
    }
    first = next(iter(model_dicts.values()), {})
    doc = {
        "kind": RUN_KIND,
        "tfdeblend_version": __version__,
        "bands": list(manifest.get("bands") or []),
        "stamp_size": int(manifest.get("stamp_size") or first.get("stamp_size", 0)),
        "preset": train.get("preset"),
        "train": train,
        "models": model_dicts,
        "dataset": {k: manifest[k] for k in _MANIFEST_SUMMARY if k in manifest},
    }
    doc.update(extra or {})
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        save_keras_atomic(model, run_dir / f"{name}.keras")
    from tfdeblend.utils import atomic_file

    with atomic_file(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    return run_dir


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``RUN_DIR/config.yaml``.

    Raises:
        ModelError: missing directory, not a tfdeblend run, or unreadable configuration.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelError(f"run directory {run_dir} does not exist")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ModelError(
            f"{run_dir} is not a tfdeblend run directory (no config.yaml); "
            "train one with tfdeblend train"
        )
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ModelError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(doc, dict) or doc.get("kind") != RUN_KIND:
        raise ModelError(f"{run_dir} is not a tfdeblend run directory ({path} is foreign)")
    return doc


def load_run(run_dir: str | os.PathLike, load_models: bool = True) -> RunInfo:
    """Read a run directory written by :func:`save_run`.

    Models are loaded with ``safe_mode=True`` and ``compile=False``.

    Raises:
        ModelError: missing/foreign directory, or a model file that cannot be loaded.
    """
    import tfdeblend.models.layers  # noqa: F401  (registers the custom layers)
    import tfdeblend.training.losses  # noqa: F401

    run_dir = Path(run_dir)
    doc = read_run_config(run_dir)
    info = RunInfo(
        path=run_dir,
        bands=tuple(doc.get("bands") or ()),
        stamp_size=int(doc.get("stamp_size") or 0),
        preset=str(doc.get("preset")),
        config=doc,
    )
    if load_models:
        for name in MODEL_NAMES:
            path = run_dir / f"{name}.keras"
            if path.is_file():
                try:
                    model = keras.saving.load_model(path, compile=False, safe_mode=True)
                except Exception as err:  # corrupt or foreign file
                    raise ModelError(f"cannot load {path}: {err}") from err
                setattr(info, name, model)
        if info.deblender is None and info.classifier is None:
            raise ModelError(f"{run_dir} holds no deblender.keras or classifier.keras")
    return info
