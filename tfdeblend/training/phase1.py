"""Phase 1: train the deblender or the classifier alone (Wang et al. 2021, section 3).

Deblender: Adam, L1 to the brightest galaxy (or the symmetric L1), constant learning rate.
Classifier: SGD with momentum 0.9, sparse categorical cross-entropy on logits, accuracy; the
learning rate follows a cosine decay from ``learning_rate`` to 0 over all steps (``lr_schedule:
auto``), since VGG at lr 0.1 needs annealing and the paper does not give its schedule.

Losses are per-example values averaged over the *global* batch: Keras ``compile``/``fit`` divides
each replica's loss by the number of replicas in sync (``keras.losses.Loss`` under a
``tf.distribute`` strategy), so 1 device and N devices give the same step
(``tests/test_distribute.py`` checks it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfdeblend.errors import TfdeblendError
from tfdeblend.models.classifier import build_classifier
from tfdeblend.models.presets import get_classifier_config, get_rdn_config
from tfdeblend.models.rdn import build_rdn
from tfdeblend.training.callbacks import make_callbacks
from tfdeblend.training.config import TrainConfig
from tfdeblend.training.losses import get_deblender_loss
from tfdeblend.training.pipelines import TrainingSets, check_manifest
from tfdeblend.training.rundir import save_run
from tfdeblend.training.strategy import get_strategy, is_chief, prepare_fit


def model_config_for(
    net: str, preset: str, channels: int, stamp_size: int, conditioned: bool = False
):
    """The architecture configuration of ``net`` for preset ``preset``."""
    if net == "deblender":
        return get_rdn_config(preset, channels, stamp_size, conditioned)
    if net == "classifier":
        return get_classifier_config(preset, channels, stamp_size, conditioned)
    raise TfdeblendError(f"net must be deblender or classifier, not {net!r}")


def make_optimizer(
    config: TrainConfig, total_steps: int | None = None
) -> keras.optimizers.Optimizer:
    """Adam or SGD (momentum 0.9) with the configured learning-rate schedule."""
    schedule = config.lr_schedule
    if schedule == "auto":
        schedule = "cosine" if config.optimizer == "sgd" else "constant"
    lr: Any = config.learning_rate
    if schedule == "cosine" and total_steps:
        lr = keras.optimizers.schedules.CosineDecay(config.learning_rate, int(total_steps))
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    return keras.optimizers.Adam(learning_rate=lr)


def compile_phase1(
    model: keras.Model, net: str, config: TrainConfig, total_steps: int | None = None
) -> keras.Model:
    """Compile ``model`` for phase 1 (call inside ``strategy.scope()``)."""
    optimizer = make_optimizer(config, total_steps)
    if net == "deblender":
        model.compile(
            optimizer=optimizer,
            loss=get_deblender_loss(config.loss, config.flux_weight, config.wing_weight),
            jit_compile=config.jit_compile,
        )
    else:
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=config.jit_compile,
        )
    return model


def build_phase1_model(
    net: str,
    config: TrainConfig,
    channels: int,
    stamp_size: int,
    total_steps: int | None = None,
    model_config: Any = None,
):
    """Build and compile the preset model of ``net``; returns ``(model, model_config)``.

    Call inside ``strategy.scope()``. With ``config.mixed_precision`` the layers compute in
    float16 and the output layer stays float32 (Keras adds loss scaling).
    """
    model_config = model_config or model_config_for(
        net, config.preset, channels, stamp_size, config.conditioned
    )
    previous = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_rdn(model_config) if net == "deblender" else build_classifier(model_config)
    finally:
        keras.config.set_dtype_policy(previous)
    compile_phase1(model, net, config, total_steps)
    return model, model_config


def network_file(source: str | os.PathLike, net: str, what: str = "--init-from") -> Path:
    """The ``.keras`` file that ``source`` stands for.

    ``source`` may be the file itself, a run directory (its ``<net>.keras``), or an exported
    model directory (``NAME`` with integer versions, or ``NAME/<version>``: the highest
    version's ``assets.extra/<net>.keras``). A directory holding none of these is returned as
    it is, so that loading it says why.

    Raises:
        TfdeblendError: ``source`` does not exist.
    """
    path = Path(source)
    if not path.exists():
        raise TfdeblendError(f"{what} {path} does not exist")
    if path.is_dir() and (path / f"{net}.keras").is_file():  # a run directory
        return path / f"{net}.keras"
    if path.is_dir() and not (path / "config.yaml").is_file():
        versions = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())
        base = path / str(versions[-1]) if versions else path
        candidate = base / "assets.extra" / f"{net}.keras"
        if candidate.is_file():
            return candidate
    return path


def load_network(
    source: str | os.PathLike, net: str
) -> tuple[keras.Model, tuple[str, ...] | None, int | None, str]:
    """Load network ``net`` from a run directory or a ``.keras`` file.

    Args:
        source: a run directory, or a ``.keras`` file (e.g. ``RUN_DIR/checkpoints/epoch-003.keras``
            or an exported model's ``assets.extra/deblender.keras``; the ``config.yaml`` of its
            run directory, or the export's ``tfdeblend.yaml``, is read as well).
        net: ``deblender`` or ``classifier``.

    Returns:
        ``(model, bands, stamp_size, preset)``; ``bands``/``stamp_size`` are ``None`` and
        ``preset`` is ``"?"`` when no metadata sits beside a ``.keras`` file.

    Raises:
        ModelError: nothing loadable there.
    """
    from tfdeblend.config import read_yaml_options
    from tfdeblend.errors import ModelError
    from tfdeblend.training.rundir import load_run, read_run_config

    source = Path(source)
    if source.is_file():
        import tfdeblend.models.layers  # noqa: F401  (registers the custom layers)

        try:
            model = keras.saving.load_model(source, compile=False, safe_mode=True)
        except Exception as err:
            raise ModelError(f"{source}: cannot load it ({err})") from err
        doc: dict = {}
        for run_dir in (source.parent, source.parent.parent):
            if (run_dir / "config.yaml").is_file():
                doc = read_run_config(run_dir)
                break
        exported = source.parent / "tfdeblend.yaml"  # an exported model's assets.extra/
        if not doc and exported.is_file():
            try:
                doc = read_yaml_options(exported)
            except TfdeblendError:  # unreadable metadata: only the weight shapes are checked
                doc = {}
        run_bands, run_size, preset = doc.get("bands"), doc.get("stamp_size"), doc.get("preset")
    else:
        info = load_run(source)
        model = getattr(info, net, None)
        if model is None:
            raise ModelError(f"{source} holds no {net}.keras")
        run_bands, run_size, preset = info.bands, info.stamp_size, info.preset
    bands = tuple(run_bands) if run_bands else None
    return model, bands, int(run_size) if run_size else None, str(preset or "?")


def check_network_fits(
    source: str | os.PathLike,
    run_bands: tuple[str, ...] | None,
    run_size: int | None,
    bands: tuple[str, ...],
    stamp_size: int,
    what: str = "--init-from",
) -> None:
    """Refuse a network trained on other bands or stamp size than the dataset's.

    Raises:
        ModelError: with one line naming the mismatch.
    """
    from tfdeblend.errors import ModelError

    if run_bands and tuple(run_bands) != tuple(bands):
        raise ModelError(
            f"{what} {source} was trained on bands {','.join(run_bands)}, "
            f"the dataset has {','.join(bands)}"
        )
    if run_size and int(run_size) != int(stamp_size):
        raise ModelError(
            f"{what} {source} was trained on {run_size}-pixel stamps, "
            f"the dataset has {stamp_size}"
        )


def read_init_weights(
    source: str | os.PathLike, net: str, bands: tuple[str, ...], stamp_size: int
) -> tuple[list[np.ndarray], str]:
    """Load the ``net`` weights that ``--init-from`` names and check they fit the dataset.

    Args:
        source: a run directory, a ``.keras`` file or an exported model directory
            (:func:`network_file`).
        net: ``deblender`` or ``classifier``.
        bands, stamp_size: the dataset's.

    Returns:
        ``(weights, preset)``: the weight arrays and the source's preset (``"?"`` when unknown).

    Raises:
        ModelError: nothing loadable there, or other bands or stamp size than the dataset.
    """
    from tfdeblend.errors import ModelError

    try:
        model, run_bands, run_size, preset = load_network(network_file(source, net), net)
    except ModelError as err:
        raise ModelError(f"--init-from {err}") from err
    check_network_fits(source, run_bands, run_size, bands, stamp_size)
    return model.get_weights(), preset


def apply_init_weights(
    model: keras.Model, weights: list[np.ndarray], source: str | os.PathLike, preset: str
) -> None:
    """Set ``model``'s weights to ``weights`` after checking the architecture matches.

    A conditioned network (:mod:`tfdeblend.conditioning`) takes the weights of the same network
    without conditions: the first convolution's kernel gains input channels, which start at
    zero, so the widened network computes exactly what the source did.

    Raises:
        ModelError: other weight shapes (another preset or architecture).
    """
    from tfdeblend.errors import ModelError

    theirs = [tuple(np.shape(w)) for w in weights]
    ours = [tuple(w.shape) for w in model.weights]
    widened = [
        i for i, (a, b) in enumerate(zip(theirs, ours))
        if a != b and len(a) == 4 and a[:2] + a[3:] == b[:2] + b[3:] and a[2] < b[2]
    ]
    if len(theirs) == len(ours) and len(widened) == 1 and all(
        a == b for i, (a, b) in enumerate(zip(theirs, ours)) if i not in widened
    ):
        weights = list(weights)
        i = widened[0]
        kernel = np.zeros(ours[i], dtype=np.asarray(weights[i]).dtype)
        kernel[:, :, : theirs[i][2], :] = weights[i]
        weights[i] = kernel
        theirs[i] = ours[i]
    if theirs != ours:
        raise ModelError(
            f"--init-from {source}: its network (preset {preset!r}) has another architecture than "
            f"the one asked for here ({len(theirs)} vs {len(ours)} weight tensors)"
        )
    model.set_weights(weights)


def init_weights(
    model: keras.Model,
    net: str,
    source: str | os.PathLike,
    bands: tuple[str, ...],
    stamp_size: int,
) -> None:
    """Copy the weights of ``net`` in ``source`` (a run directory or a ``.keras`` file) into
    ``model``: :func:`read_init_weights` then :func:`apply_init_weights`."""
    weights, preset = read_init_weights(source, net, bands, stamp_size)
    apply_init_weights(model, weights, source, preset)


def open_workspace(
    out: Path, strategy: tf.distribute.Strategy, overwrite: bool
) -> tuple[bool, Path, bool]:
    """Where this process writes during training: ``(chief, work_dir, resume)``.

    The chief writes the run directory ``out`` (created, refused, cleared or resumed by
    :func:`prepare_out_dir`). Other multi-worker workers must also write their checkpoints
    somewhere: they get a throw-away temporary directory, which the caller removes after ``fit``.
    """
    chief = is_chief(strategy)
    if not chief:
        return False, Path(tempfile.mkdtemp(prefix="tfdeblend-worker-")), False
    return True, out, prepare_out_dir(out, overwrite)


def prepare_out_dir(out: Path, overwrite: bool) -> bool:
    """Create/refuse/clear the run directory; return True when resuming from ``backup/``."""
    if out.exists() and not out.is_dir():
        raise TfdeblendError(f"{out} exists and is not a directory")
    if out.exists() and overwrite:
        shutil.rmtree(out)
    elif out.exists() and (out / "backup").is_dir():
        return True
    elif out.exists() and any(out.iterdir()):
        raise TfdeblendError(f"{out} already exists; pass --overwrite to replace it")
    from tfdeblend.utils import check_output_path

    check_output_path(out, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    return False


def train_phase1(
    dataset_dir: str | os.PathLike | list,
    out_dir: str | os.PathLike,
    net: str,
    config: TrainConfig | None = None,
    strategy: str | tf.distribute.Strategy = "default",
    overwrite: bool = False,
    verbose: int | str = "auto",
    model_config: Any = None,
    callbacks: list | None = None,
) -> dict[str, list]:
    """Train one network alone and write a run directory.

    Rerunning the same call on a run directory whose ``backup/`` exists (an interrupted run)
    resumes from the last completed epoch instead of refusing.

    Args:
        dataset_dir: dataset written by ``tfdeblend simulate`` (``deblender`` kind for the
            deblender, ``classifier`` kind for the classifier), or a list of them: the training
            examples are then drawn from all of them in proportion to their sizes (e.g. a
            ``classifier`` set and a ``residuals`` set from ``tfdeblend residuals``).
        out_dir: run directory to write (see ``docs/architecture.md``).
        net: ``"deblender"`` or ``"classifier"``.
        config: hyperparameters (default: the paper's, :func:`paper_train_config`).
        strategy: ``default``, ``mirrored``, ``multi-worker`` or a strategy instance.
        overwrite: replace an existing run directory.
        verbose: Keras ``fit`` verbosity (``"auto"``: progress bar on a terminal, one line per
            epoch otherwise).
        model_config: architecture configuration overriding the preset.
        callbacks: extra Keras callbacks (after the run's own ones).

    Returns:
        The per-epoch history ``{"epoch": [...], "loss": [...], ...}`` (also in
        ``history.json``), including epochs run before a resumption.

    Raises:
        TfdeblendError: bad configuration, dataset/model mismatch, existing output.
    """
    from tfdeblend.training.config import paper_train_config

    if net not in ("deblender", "classifier"):
        raise TfdeblendError(f"net must be deblender or classifier, not {net!r}")
    config = config or paper_train_config(1, net)
    if config.net != net or config.phase != 1:
        config = config.replace(net=net, phase=1)

    def check(manifest, where, first):  # every set fits the network and the first set
        first = first or {}
        check_manifest(manifest, net, first.get("bands"), first.get("stamp_size"), where=where)

    data = TrainingSets(dataset_dir, config.validation_fraction, check)
    bands, stamp_size = data.bands, data.stamp_size
    batch = config.batch_size
    steps = data.steps_per_epoch(batch, config.steps_per_epoch)

    out = Path(out_dir)
    init = None
    if config.init_from:  # read (and check) before the output directory is touched
        source = Path(config.init_from).resolve()
        if source == out.resolve() or out.resolve() in source.parents:
            raise TfdeblendError(
                f"--init-from {config.init_from} is inside the output {out}; train into another "
                "directory"
            )
        config = config.replace(init_from=str(source))
        init = read_init_weights(source, net, bands, stamp_size)
    strategy = get_strategy(strategy)
    chief, work, resume = open_workspace(out, strategy, overwrite)
    keras.utils.set_random_seed(config.seed)

    train_ds, val_ds, val_steps = data.streams(
        net, batch, config.seed, augment=config.augment, peel_fraction=config.peel_fraction,
        conditioned=config.conditioned,
    )
    sample = None
    if net == "deblender" and chief:
        x, y = next(iter((val_ds or train_ds).take(1)))
        x = [np.asarray(v[:4]) for v in x] if isinstance(x, tuple) else np.asarray(x[:4])
        sample = (x, np.asarray(y[:4, 0]))

    with strategy.scope():
        model, model_config = build_phase1_model(
            net, config, len(bands), stamp_size, config.epochs * steps, model_config
        )
        if init is not None and not resume:
            apply_init_weights(model, init[0], config.init_from, init[1])
    extra_callbacks = list(callbacks or [])
    callbacks = make_callbacks(work, config, sample_images=sample) + extra_callbacks
    prepare_fit(model, strategy, train_ds)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if resume and chief:
        print(f"Resuming the interrupted run in {out} from its backup.", file=sys.stderr)
    try:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            steps_per_epoch=steps,
            validation_steps=val_steps,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the tf.data pipeline shuffles; Keras would only warn
        )
    finally:
        if not chief:
            shutil.rmtree(work, ignore_errors=True)
    history = callbacks[0].history
    if chief:
        save_run(out, {net: model}, config, {net: model_config}, data.summary)
    return history
