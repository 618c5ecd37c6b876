"""Phase 2: joint training of the deblender (RDN) and the classifier in the iterative setting.

Wang et al. (2021), section 3, train the two networks together on 2-galaxy blends after each has
been trained alone (phase 1). One step, for a batch of blends ``x`` with noiseless truths
``t1`` (brightest) and ``t2``, all ``(B, H, W, C)`` channels last in flux units (electrons):

* deblend-1: ``x_hat, s = normalize(x)``; ``d1 = RDN(x_hat) * s``; residual-1 ``r1 = x - d1``;
* deblend-2: ``r1_hat, s1 = normalize(r1)`` (the residual divided by its max, the same
  normalization as everywhere); ``d2 = RDN(r1_hat) * s1`` (scaled back); ``r2 = r1 - d2``;
* RDN loss (Eq. 3): ``L1(d1 / s, t1 / s) + lambda * CE(C(normalize(d1)), 1)``, gradients for the
  RDN's variables only (the classifier is used frozen, in inference mode);
* classifier loss (Eq. 4): cross-entropy of the classifier on the seven images
  ``{x: 2, d1: 1, d2: 1, r1: 1, r2: 0, t1: 1, t2: 1}``, each normalized by its own scale, weight
  ``alpha`` on the 1-galaxy images and 1 on the others, gradients for the classifier's variables
  only (the RDN outputs enter through ``stop_gradient``).

The classifier always runs in inference mode here: its batch-normalization statistics stay those
of phase 1 and dropout is off, as usual when fine-tuning (and the only way a step under
``MirroredStrategy``, whose replicas would otherwise each normalize by their own half batch,
equals the single-device step). Its weights, BN scales and offsets are still trained by Eq. 4.

Every loss is a per-example value (the classifier loss sums its seven weighted terms per example)
summed over the replica's examples and divided by the *global* batch size
(:func:`tf.nn.compute_average_loss`), so the gradients that ``MirroredStrategy`` sums over the
replicas equal the single-device gradients of the batch mean.

Example:
    >>> import keras
    >>> from tfdeblend.training.joint import JointModel
    >>> inp = keras.Input((8, 8, 1))
    >>> rdn = keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same")(inp))
    >>> inp2 = keras.Input((8, 8, 1))
    >>> logits = keras.layers.Dense(4)(keras.layers.Flatten()(inp2))
    >>> clf = keras.Model(inp2, logits)
    >>> joint = JointModel(rdn, clf)
    >>> joint.compile()
    >>> sorted(joint.peel(keras.ops.ones((2, 8, 8, 1))))
    ['d1', 'd2', 'r1', 'r2']
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tfdeblend.conditioning import (
    call_network,
    condition_features,
    conditions_from_features,
    is_conditioned,
    record_conditions,
)
from tfdeblend.errors import DataError, ModelError, TfdeblendError
from tfdeblend.normalize import denormalize, normalize
from tfdeblend.training.callbacks import JsonHistory, make_callbacks
from tfdeblend.training.config import TrainConfig, paper_train_config
from tfdeblend.training.losses import l1_loss, symmetric_l1_loss
from tfdeblend.training.pipelines import TrainingSets, check_manifest
from tfdeblend.training.rundir import RunInfo, load_run, save_run
from tfdeblend.training.strategy import get_strategy, prepare_fit

#: Labels of the seven classifier images in Eq. 4, in the order they are stacked.
CLASSIFIER_IMAGES: tuple[str, ...] = ("x", "d1", "d2", "r1", "r2", "t1", "t2")
#: Number of galaxies in each of :data:`CLASSIFIER_IMAGES`.
CLASSIFIER_LABELS: tuple[int, ...] = (2, 1, 1, 1, 0, 1, 1)


def per_example_ce(logits: tf.Tensor, labels: tf.Tensor | int) -> tf.Tensor:
    """Sparse softmax cross-entropy per example (natural log).

    Args:
        logits: (B, K) classifier logits.
        labels: (B,) integer labels, or one integer for the whole batch.

    Returns:
        (B,) cross-entropy.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.broadcast_to(tf.cast(labels, tf.int32), tf.shape(logits)[:1])
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


@keras.saving.register_keras_serializable(package="tfdeblend")
class JointModel(keras.Model):
    """The deblender and the classifier trained together (phase 2 of Wang et al. 2021).

    The model holds two functional models and two Adam optimizers; ``fit`` runs
    :meth:`train_step`, which implements Eq. 3 (RDN loss) and Eq. 4 (classifier loss) on
    2-galaxy blends. Training data are pairs ``(blend, truths)``: ``blend`` (B, H, W, C) and
    ``truths`` (B, S, H, W, C) with S >= 2, brightest first, in flux units; or dataset dicts with
    the keys ``blend`` and ``isolated`` (see ``docs/architecture.md``).

    Args:
        deblender: RDN, input and output (None, H, W, C) normalized images.
        classifier: counter, input (None, H, W, C) normalized image, output (None, 4) logits.
        learning_rate: Adam rate of the RDN (paper: 1e-5).
        classifier_learning_rate: Adam rate of the classifier (paper: 1e-6).
        ce_weight: lambda, weight of the classifier cross-entropy in the RDN loss (paper: 1e-4).
        single_weight: alpha, weight of the 1-galaxy images in the classifier loss (paper: 0.2).
        loss: ``"l1"`` (the paper's) or ``"symmetric"``
            (:func:`~tfdeblend.training.losses.symmetric_l1_loss`: the smaller L1 to either truth
            when the two are close in brightness).
        flux_weight: weight of the relative band-flux error added to that loss
            (:func:`~tfdeblend.training.losses.flux_error`; 0, the paper's loss, turns it off).
        wing_weight: weight of the asinh-stretched image error added to that loss
            (:func:`~tfdeblend.training.losses.wing_error`; 0 turns it off).
        **kwargs: passed to :class:`keras.Model` (e.g. ``name``).

    Attributes:
        deblender: the RDN being fine-tuned.
        classifier: the classifier being fine-tuned.
        rdn_optimizer: Adam for the RDN's variables.
        classifier_optimizer: Adam for the classifier's variables.
    """

    def __init__(
        self,
        deblender: keras.Model,
        classifier: keras.Model,
        learning_rate: float = 1e-5,
        classifier_learning_rate: float = 1e-6,
        ce_weight: float = 1e-4,
        single_weight: float = 0.2,
        loss: str = "l1",
        flux_weight: float = 0.0,
        wing_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if loss not in ("l1", "symmetric"):
            raise TfdeblendError(f"loss must be l1 or symmetric, not {loss!r}")
        if tuple(deblender.input_shape[1:]) != tuple(classifier.input_shape[1:]):
            raise TfdeblendError(
                f"deblender input {tuple(deblender.input_shape[1:])} and classifier input "
                f"{tuple(classifier.input_shape[1:])} differ (H, W, C)"
            )
        self.deblender = deblender
        self.classifier = classifier
        self.learning_rate = float(learning_rate)
        self.classifier_learning_rate = float(classifier_learning_rate)
        self.ce_weight = float(ce_weight)
        self.single_weight = float(single_weight)
        self.loss_kind = loss
        self.flux_weight = float(flux_weight)
        self.wing_weight = float(wing_weight)
        self.rdn_optimizer = keras.optimizers.Adam(self.learning_rate, name="rdn_adam")
        self.classifier_optimizer = keras.optimizers.Adam(
            self.classifier_learning_rate, name="classifier_adam"
        )
        # Build the optimizers' slots now so a BackupAndRestore checkpoint (which holds both
        # networks and both optimizers) can be loaded before the first step.
        self.rdn_optimizer.build(self.deblender.trainable_variables)
        self.classifier_optimizer.build(self.classifier.trainable_variables)
        weights = [1.0 if n != 1 else self.single_weight for n in CLASSIFIER_LABELS]
        self._image_weights = tf.constant(weights, tf.float32)
        self._image_labels = tf.constant(CLASSIFIER_LABELS, tf.int32)
        self.rdn_loss_tracker = keras.metrics.Mean(name="rdn_loss")
        self.l1_tracker = keras.metrics.Mean(name="l1")
        self.ce_rdn_tracker = keras.metrics.Mean(name="ce_rdn")
        self.classifier_loss_tracker = keras.metrics.Mean(name="classifier_loss")
        self.classifier_accuracy = keras.metrics.SparseCategoricalAccuracy(
            name="classifier_accuracy"
        )
        self.built = True

    # ------------------------------------------------------------------ configuration

    def compile(self, jit_compile: bool | str = False, **kwargs: Any) -> None:
        """Prepare for ``fit``; the two optimizers are the model's own (``optimizer`` is ignored).

        ``self.optimizer`` is set to the RDN optimizer, so its ``iterations`` count the steps.
        """
        kwargs.pop("optimizer", None)
        super().compile(optimizer=self.rdn_optimizer, jit_compile=jit_compile, **kwargs)

    def get_config(self) -> dict[str, Any]:
        """Serializable configuration (the two networks as nested Keras objects)."""
        return {
            "deblender": keras.saving.serialize_keras_object(self.deblender),
            "classifier": keras.saving.serialize_keras_object(self.classifier),
            "learning_rate": self.learning_rate,
            "classifier_learning_rate": self.classifier_learning_rate,
            "ce_weight": self.ce_weight,
            "single_weight": self.single_weight,
            "loss": self.loss_kind,
            "flux_weight": self.flux_weight,
            "wing_weight": self.wing_weight,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> JointModel:
        """Inverse of :meth:`get_config`."""
        config = dict(config)
        config["deblender"] = keras.saving.deserialize_keras_object(config["deblender"])
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """The five tracked metrics (reset by Keras at each epoch)."""
        return [
            self.rdn_loss_tracker,
            self.l1_tracker,
            self.ce_rdn_tracker,
            self.classifier_loss_tracker,
            self.classifier_accuracy,
        ]

    # ------------------------------------------------------------------ the two passes

    @staticmethod
    def _apply(model, normalized, scale, conditions, training: bool) -> tf.Tensor:
        """``model`` on normalized images, with the condition features of ``conditions`` at
        their ``scale`` when the network takes them (:mod:`tfdeblend.conditioning`)."""
        features = None
        if is_conditioned(model):
            if conditions is None:
                raise TfdeblendError(
                    f"network {model.name} takes observing conditions; the phase-2 data have none"
                )
            features = condition_features(conditions, scale)
        return call_network(model, normalized, features, training=training)

    def deblend_once(
        self, images: tf.Tensor, training: bool = False, conditions: tf.Tensor | None = None
    ) -> tf.Tensor:
        """One RDN pass in flux units: ``denormalize(RDN(normalize(images)))``.

        Args:
            images: (B, H, W, C) blend or residual, any linear flux unit.
            training: run the RDN in training mode.
            conditions: (B, 2, C) noise sigma (the images' units) and PSF FWHM (pixels), for a
                conditioned RDN.

        Returns:
            (B, H, W, C) brightest galaxy, in the input's units.
        """
        normalized, scale = normalize(images)
        return denormalize(
            self._apply(self.deblender, normalized, scale, conditions, training), scale)

    def peel(
        self, blend: tf.Tensor, training: bool = False, conditions: tf.Tensor | None = None
    ) -> dict[str, tf.Tensor]:
        """Two deblending passes: ``d1, r1 = x - d1, d2, r2 = r1 - d2`` (flux units, (B, H, W, C))."""
        blend = tf.convert_to_tensor(blend, tf.float32)
        d1 = self.deblend_once(blend, training=training, conditions=conditions)
        r1 = blend - d1
        d2 = self.deblend_once(r1, training=training, conditions=conditions)
        return {"d1": d1, "r1": r1, "d2": d2, "r2": r1 - d2}

    def call(self, inputs: Any, training: bool = False) -> dict[str, tf.Tensor]:
        """Same as :meth:`peel`; ``inputs`` is the blend, or ``(blend, condition features)``."""
        blend, conditions = self._split_input(inputs)
        return self.peel(blend, training=training, conditions=conditions)

    # ------------------------------------------------------------------ losses

    @staticmethod
    def _split_input(x: Any) -> tuple[tf.Tensor, tf.Tensor | None]:
        """``(blend, conditions)`` of a network input: the blend, or the pair ``(blend, condition
        features at scale 1)`` that the training pipelines give a conditioned network."""
        if isinstance(x, (tuple, list)):
            return tf.cast(x[0], tf.float32), conditions_from_features(x[1])
        return tf.cast(x, tf.float32), None

    @classmethod
    def _unpack(cls, data: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """``(blend, t1, t2, conditions)`` of a batch: dataset records, or ``(x, truths)`` pairs
        (``x`` as :meth:`_split_input` reads it); ``conditions`` is ``None`` without them."""
        if isinstance(data, dict):
            blend, truths = tf.cast(data["blend"], tf.float32), data["isolated"]
            conditions = record_conditions(data) if "noise_sigma" in data else None
        else:
            (blend, conditions), truths = cls._split_input(data[0]), data[1]
        truths = tf.cast(truths, tf.float32)
        return blend, truths[:, 0], truths[:, 1], conditions

    def rdn_losses(
        self, blend: tf.Tensor, t1: tf.Tensor, t2: tf.Tensor, training: bool,
        conditions: tf.Tensor | None = None,
    ) -> dict[str, tf.Tensor]:
        """Eq. 3 per example, with the deblend-1 image.

        Args:
            blend: (B, H, W, C) 2-galaxy blends, flux units.
            t1: (B, H, W, C) brightest noiseless galaxy.
            t2: (B, H, W, C) second galaxy.
            training: run the RDN in training mode (the classifier always runs in inference
                mode).
            conditions: (B, 2, C) the blends' conditions, for conditioned networks.

        Returns:
            dict of (B,) tensors ``l1``, ``ce_rdn``, ``rdn_loss`` and the (B, H, W, C) ``d1``.
        """
        normalized, scale = normalize(blend)
        d1_normalized = self._apply(self.deblender, normalized, scale, conditions, training)
        d1 = denormalize(d1_normalized, scale)
        # the targets are divided by the blend's scale, as in training/pipelines.py
        targets = normalize(tf.stack([t1, t2], axis=1), scale[:, None])[0]
        if self.loss_kind == "symmetric":
            l1 = symmetric_l1_loss(targets, d1_normalized, flux_weight=self.flux_weight,
                                   wing_weight=self.wing_weight)
        else:
            l1 = l1_loss(targets, d1_normalized, flux_weight=self.flux_weight,
                         wing_weight=self.wing_weight)
        d1_input, d1_scale = normalize(d1)
        ce = per_example_ce(
            self._apply(self.classifier, d1_input, d1_scale, conditions, False), 1)
        return {"l1": l1, "ce_rdn": ce, "rdn_loss": l1 + self.ce_weight * ce, "d1": d1}

    def classifier_losses(
        self, images: dict[str, tf.Tensor], conditions: tf.Tensor | None = None
    ) -> dict[str, tf.Tensor]:
        """Eq. 4 per example.

        Args:
            images: the seven (B, H, W, C) images named in :data:`CLASSIFIER_IMAGES`, flux units.
            conditions: (B, 2, C) the blends' conditions, given to a conditioned classifier with
                every image (each at its own scale), as phase 1 gives them to noiseless images.

        Returns:
            ``classifier_loss`` (B,): the alpha-weighted sum of the seven cross-entropies;
            ``logits`` (7 B, 4) and ``labels`` (7 B,), image-major.
        """
        pairs = [normalize(tf.stop_gradient(images[name])) for name in CLASSIFIER_IMAGES]
        stacked = tf.concat([normalized for normalized, _ in pairs], axis=0)
        scales = tf.concat([scale for _, scale in pairs], axis=0)
        if conditions is not None:
            conditions = tf.concat([conditions] * len(CLASSIFIER_IMAGES), axis=0)
        batch = tf.shape(images["x"])[0]
        labels = tf.repeat(self._image_labels, batch)
        logits = tf.cast(
            self._apply(self.classifier, stacked, scales, conditions, False), tf.float32)
        ce = tf.reshape(per_example_ce(logits, labels), (len(CLASSIFIER_IMAGES), batch))
        loss = tf.reduce_sum(self._image_weights[:, None] * ce, axis=0)
        return {"classifier_loss": loss, "logits": logits, "labels": labels}

    # ------------------------------------------------------------------ steps

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One phase-2 step: Eq. 3 updates the RDN, Eq. 4 updates the classifier."""
        x, t1, t2, conditions = self._unpack(data)

        # Eq. 3: deblend-1 and its loss, for the RDN's variables only.
        with tf.GradientTape() as rdn_tape:
            rdn = self.rdn_losses(x, t1, t2, training=True, conditions=conditions)
            rdn_loss = tf.nn.compute_average_loss(rdn["rdn_loss"])
        rdn_vars = self.deblender.trainable_variables
        rdn_grads = rdn_tape.gradient(rdn_loss, rdn_vars)

        # Iterative setting: the residual, renormalized, goes through the RDN again.
        d1 = tf.stop_gradient(rdn["d1"])
        r1 = x - d1
        d2 = tf.stop_gradient(self.deblend_once(r1, training=True, conditions=conditions))
        r2 = r1 - d2

        # Eq. 4: the classifier on all seven images, for the classifier's variables only.
        images = {"x": x, "d1": d1, "d2": d2, "r1": r1, "r2": r2, "t1": t1, "t2": t2}
        with tf.GradientTape() as classifier_tape:
            clf = self.classifier_losses(images, conditions)
            classifier_loss = tf.nn.compute_average_loss(clf["classifier_loss"])
        clf_vars = self.classifier.trainable_variables
        clf_grads = classifier_tape.gradient(classifier_loss, clf_vars)

        # The control dependency ties every state change (including the optimizers' iteration
        # counters and the metrics' counts, which with a static batch size do not depend on
        # the data) to this batch: when a dataset of unknown length runs out, Keras calls the
        # step once more and it must then change nothing.
        with tf.control_dependencies([rdn_loss, classifier_loss]):
            self.rdn_optimizer.apply_gradients(zip(rdn_grads, rdn_vars))
            self.classifier_optimizer.apply_gradients(zip(clf_grads, clf_vars))
            return self._update_metrics(rdn, clf)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        """The losses of :meth:`train_step` in inference mode, without updates."""
        x, t1, t2, conditions = self._unpack(data)
        rdn = self.rdn_losses(x, t1, t2, training=False, conditions=conditions)
        d1 = rdn["d1"]
        r1 = x - d1
        d2 = self.deblend_once(r1, training=False, conditions=conditions)
        images = {"x": x, "d1": d1, "d2": d2, "r1": r1, "r2": r1 - d2, "t1": t1, "t2": t2}
        clf = self.classifier_losses(images, conditions)
        with tf.control_dependencies([rdn["rdn_loss"], clf["classifier_loss"]]):
            return self._update_metrics(rdn, clf)

    def _update_metrics(self, rdn: dict, clf: dict) -> dict[str, tf.Tensor]:
        # Per-example values, so that the replicas' sums and counts add up to the global mean.
        self.rdn_loss_tracker.update_state(rdn["rdn_loss"])
        self.l1_tracker.update_state(rdn["l1"])
        self.ce_rdn_tracker.update_state(rdn["ce_rdn"])
        self.classifier_loss_tracker.update_state(clf["classifier_loss"])
        self.classifier_accuracy.update_state(clf["labels"], clf["logits"])
        return {m.name: m.result() for m in self.metrics}


# ---------------------------------------------------------------------- phase 2 driver


def check_phase2_dataset(
    manifest: dict[str, Any], bands: tuple[str, ...], stamp_size: int, where: str = "dataset"
) -> None:
    """Refuse a dataset that is not made of 2-galaxy blends matching the phase-1 models.

    Accepted: a ``deblender`` dataset (2-galaxy blends) or a ``test`` dataset with ``n_gal: 2``.

    Raises:
        DataError: wrong kind, bands or stamp size (one line naming the mismatch).
    """
    kind = manifest.get("kind")
    n_gal = (manifest.get("config") or {}).get("n_gal")
    if not (kind == "deblender" or (kind == "test" and n_gal == 2)):
        what = f"a {kind!r} dataset" + (f" of {n_gal}-galaxy blends" if kind == "test" else "")
        raise DataError(
            f"phase 2 trains on 2-galaxy blends (a 'deblender' dataset); {where} is {what}"
        )
    check_manifest(manifest, "deblender", bands, stamp_size, where=where)


def _load_phase1(run_dir: str | os.PathLike, name: str, load_models: bool) -> RunInfo:
    info = load_run(run_dir, load_models=load_models)
    if load_models and getattr(info, name) is None:
        raise ModelError(f"{run_dir} holds no {name}.keras (train it with --net {name})")
    if not load_models and not (Path(run_dir) / f"{name}.keras").is_file():
        raise ModelError(f"{run_dir} holds no {name}.keras (train it with --net {name})")
    return info


def train_phase2(
    dataset_dir: str | os.PathLike | list,
    deblender_run: str | os.PathLike,
    classifier_run: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    strategy: str | tf.distribute.Strategy = "default",
    overwrite: bool = False,
    verbose: int | str = "auto",
) -> dict[str, list]:
    """Phase 2: fine-tune a phase-1 deblender and classifier together and write a run directory.

    The run directory holds ``deblender.keras`` and ``classifier.keras`` (the fine-tuned
    networks), ``config.yaml`` (with the phase-1 runs it started from), ``checkpoints/`` (the
    JointModel after every epoch), ``backup/``, ``logs/`` and ``history.json``. Rerunning the
    same call on an interrupted run directory resumes from its last completed epoch.

    Args:
        dataset_dir: 2-galaxy blends (``tfdeblend simulate deblender``), or a list of such
            datasets: examples are drawn from all of them in proportion to their sizes (as in
            phase 1, :class:`~tfdeblend.training.pipelines.TrainingSets`).
        deblender_run: phase-1 run directory holding ``deblender.keras``.
        classifier_run: phase-1 run directory holding ``classifier.keras`` (may be the same).
        out_dir: the phase-2 run directory to write.
        config: hyperparameters (default: the paper's, ``paper_train_config(2)``: Adam, lr 1e-5
            and 1e-6, batch 8, 10 epochs, lambda 1e-4, alpha 0.2).
        strategy: ``default``, ``mirrored``, ``multi-worker`` or a strategy instance.
        overwrite: replace an existing run directory.
        verbose: Keras ``fit`` verbosity (``"auto"``: progress bar on a terminal, one line per
            epoch otherwise).

    Returns:
        The per-epoch history ``{"epoch": [...], "rdn_loss": [...], "l1": [...], "ce_rdn":
        [...], "classifier_loss": [...], "classifier_accuracy": [...], "val_...": [...]}``.

    Raises:
        TfdeblendError: missing or mismatched runs, a dataset that is not 2-galaxy blends or does
            not match their bands/stamp size, an existing output, a bad configuration.
    """
    from tfdeblend.training.phase1 import open_workspace

    config = config or paper_train_config(2)
    if config.phase != 2 or config.net != "joint":
        config = config.replace(phase=2, net="joint")
    deb_info = _load_phase1(deblender_run, "deblender", load_models=False)
    clf_info = _load_phase1(classifier_run, "classifier", load_models=False)
    if deb_info.bands != clf_info.bands or deb_info.stamp_size != clf_info.stamp_size:
        raise ModelError(
            f"the deblender run ({','.join(deb_info.bands)}, {deb_info.stamp_size} px) and the "
            f"classifier run ({','.join(clf_info.bands)}, {clf_info.stamp_size} px) differ"
        )
    bands, stamp_size = deb_info.bands, deb_info.stamp_size
    # the networks' size comes from phase 1: record it, not the CLI's default preset
    config = config.replace(preset=deb_info.config.get("preset") or config.preset)
    # conditioned networks (either) read the observing conditions stored with the blends
    conditioned = any(
        int((info.model_config(name) or {}).get("conditions") or 0) > 0
        for info, name in ((deb_info, "deblender"), (clf_info, "classifier"))
    )
    if config.conditioned and not conditioned:
        raise ModelError(
            "--conditioned: phase 2 takes the observing conditions when its networks do, and "
            "neither of these does (widen them in phase 1 with --conditioned --init-from)"
        )
    config = config.replace(conditioned=conditioned)
    data = TrainingSets(
        dataset_dir, config.validation_fraction,
        lambda manifest, where, first: check_phase2_dataset(manifest, bands, stamp_size, where),
    )
    batch = config.batch_size
    steps = data.steps_per_epoch(batch, config.steps_per_epoch)

    strategy = get_strategy(strategy)
    out = Path(out_dir)
    chief, work, resume = open_workspace(out, strategy, overwrite)
    keras.utils.set_random_seed(config.seed)

    # phase 2 peels the blends it reads: no augmentation, no pre-peeled examples
    train_ds, val_ds, val_steps = data.streams("deblender", batch, config.seed,
                                               conditioned=conditioned)

    with strategy.scope():
        deblender = _load_phase1(deblender_run, "deblender", load_models=True).deblender
        classifier = _load_phase1(classifier_run, "classifier", load_models=True).classifier
        model = JointModel(
            deblender, classifier,
            learning_rate=config.learning_rate,
            classifier_learning_rate=config.classifier_learning_rate,
            ce_weight=config.ce_weight,
            single_weight=config.single_weight,
            loss=config.loss,
            flux_weight=config.flux_weight,
            wing_weight=config.wing_weight,
        )
        model.compile(jit_compile=config.jit_compile)
    prepare_fit(model, strategy, train_ds)
    callbacks = make_callbacks(work, config)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if resume and chief:
        print(f"Resuming the interrupted run in {out} from its backup.", file=sys.stderr)
    try:
        model.fit(train_ds, validation_data=val_ds, validation_steps=val_steps,
                  epochs=config.epochs, steps_per_epoch=steps, callbacks=callbacks,
                  verbose=verbose, shuffle=False)  # tf.data shuffles; Keras would only warn
    finally:
        if not chief:
            shutil.rmtree(work, ignore_errors=True)
    history = next(c for c in callbacks if isinstance(c, JsonHistory)).history
    if chief:
        model_configs = {
            "deblender": deb_info.model_config("deblender") or {},
            "classifier": clf_info.model_config("classifier") or {},
        }
        phase1 = {"deblender_run": str(Path(deblender_run).resolve()),
                  "classifier_run": str(Path(classifier_run).resolve())}
        save_run(out, {"deblender": model.deblender, "classifier": model.classifier}, config,
                 model_configs, data.summary, extra={"phase1": phase1})
    return history
