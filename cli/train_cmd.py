"""``tfdeblend train``: phase 1 (one network alone) or phase 2 (joint fine-tuning).

Thin wrapper: the work is :func:`tfdeblend.training.phase1.train_phase1` and
:func:`tfdeblend.training.joint.train_phase2`; the configuration is built by
:func:`tfdeblend.training.config.build_train_config` (paper defaults, then ``--config`` YAML,
then flags).
"""

from __future__ import annotations

import click


@click.command(name="train")
@click.argument("dataset_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--phase",
    type=click.IntRange(1, 2),
    default=1,
    show_default=True,
    help="1: train one network alone; 2: fine-tune both together.",
)
@click.option(
    "--net", type=click.Choice(["deblender", "classifier"]), help="Phase 1: which network to train."
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Run directory to write (rerun the same command to resume an interrupted run).",
)
@click.option(
    "--deblender",
    "deblender_run",
    type=click.Path(file_okay=False),
    help="Phase 2: phase-1 deblender run directory.",
)
@click.option(
    "--classifier",
    "classifier_run",
    type=click.Path(file_okay=False),
    help="Phase 2: phase-1 classifier run directory.",
)
@click.option(
    "--preset",
    type=click.Choice(["paper", "cpu", "tiny"]),
    help="Model size (default: paper; cpu for a 2-core machine; tiny for tests).",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Passes over the dataset.")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), help="Batches per epoch.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Global batch size.")
@click.option(
    "--learning-rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Learning rate (phase 2: of the deblender).",
)
@click.option(
    "--classifier-learning-rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Phase 2: learning rate of the classifier.",
)
@click.option("--loss", type=click.Choice(["l1", "symmetric"]), help="Deblender loss.")
@click.option(
    "--flux-weight",
    type=click.FloatRange(min=0),
    help="Weight of the relative band-flux error added to the deblender loss (default 0, the "
    "paper's loss).",
)
@click.option(
    "--wing-weight",
    type=click.FloatRange(min=0),
    help="Weight of the asinh-stretched image error (every pixel by its relative error, a "
    "bright galaxy's wings included) added to the deblender loss (default 0).",
)
@click.option(
    "--validation-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    help="Share of the dataset held out for validation.",
)
@click.option(
    "--strategy",
    type=click.Choice(["default", "mirrored", "multi-worker"]),
    default="default",
    show_default=True,
    help="tf.distribute strategy (multi-worker reads TF_CONFIG).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="YAML file of TrainConfig options (applied before the flags).",
)
@click.option("--seed", type=click.IntRange(min=0), help="Seed for initialization and shuffling.")
@click.option(
    "--mixed-precision",
    is_flag=True,
    default=None,
    help="mixed_float16 compute (GPUs); the output layers stay float32.",
)
@click.option("--jit-compile", is_flag=True, default=None, help="XLA-compile the train step.")
@click.option(
    "--augment/--no-augment",
    default=None,
    help="Phase 1: random 90-degree rotations and flips of the training stamps.",
)
@click.option(
    "--peel-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    help="Phase 1 deblender: share of training blends whose brightest galaxy is removed, so the "
    "network also learns the later peel steps.",
)
@click.option(
    "--init-from",
    type=click.Path(exists=True),
    help="Phase 1: start from the network in this run directory, or a .keras checkpoint "
    "(fine-tuning).",
)
@click.option(
    "--conditioned/--no-conditioned",
    default=None,
    help="Phase 1: the network also takes each band's noise and PSF FWHM as input (datasets "
    "with observing conditions; with --init-from, an image-only network is widened). Phase 2 "
    "gives the conditions to the networks that take them without it.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
def train(
    dataset_dirs,
    phase,
    net,
    out_dir,
    deblender_run,
    classifier_run,
    preset,
    epochs,
    steps_per_epoch,
    batch_size,
    learning_rate,
    classifier_learning_rate,
    loss,
    flux_weight,
    wing_weight,
    validation_fraction,
    strategy,
    config_path,
    seed,
    mixed_precision,
    jit_compile,
    augment,
    peel_fraction,
    init_from,
    conditioned,
    overwrite,
) -> None:
    """Train on DATASET_DIRS (written by ``tfdeblend simulate`` or ``tfdeblend residuals``).

    Phase 1 takes one or more datasets (examples are drawn from all of them in proportion to
    their sizes); so does phase 2, whose datasets must be 2-galaxy blends ('deblender').

    \b
    Phase 1 (the paper's defaults: deblender Adam 1e-4, batch 128, 150 epochs;
    classifier SGD 0.1, batch 200, 200 epochs):
      tfdeblend train --phase 1 --net deblender data/deblender --out runs/rdn --preset cpu
      tfdeblend train --phase 1 --net classifier data/classifier --out runs/vgg --preset cpu
    Phase 2 (joint fine-tuning, lr 1e-5 / 1e-6, batch 8, 10 epochs):
      tfdeblend train --phase 2 data/deblender --deblender runs/rdn --classifier runs/vgg \\
          --out runs/joint
    """
    from tfdeblend.errors import TfdeblendError
    from tfdeblend.training.config import build_train_config

    if phase == 1:
        if net is None:
            raise TfdeblendError("--phase 1 needs --net deblender or --net classifier")
        if deblender_run or classifier_run:
            raise TfdeblendError("--deblender/--classifier are phase-2 options")
    else:
        if net is not None:
            raise TfdeblendError("--net is a phase-1 option; phase 2 trains both networks")
        if not deblender_run or not classifier_run:
            raise TfdeblendError("--phase 2 needs --deblender RUN_DIR and --classifier RUN_DIR")
    config = build_train_config(
        phase,
        net,
        config_path,
        preset=preset,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        learning_rate=learning_rate,
        classifier_learning_rate=classifier_learning_rate,
        loss=loss,
        flux_weight=flux_weight,
        wing_weight=wing_weight,
        validation_fraction=validation_fraction,
        seed=seed,
        mixed_precision=mixed_precision,
        jit_compile=jit_compile,
        augment=augment,
        peel_fraction=peel_fraction,
        init_from=init_from,
        conditioned=conditioned,
    )
    if phase == 1:
        from tfdeblend.training.phase1 import train_phase1

        history = train_phase1(
            list(dataset_dirs), out_dir, net, config, strategy=strategy, overwrite=overwrite
        )
    else:
        from tfdeblend.training.joint import train_phase2

        history = train_phase2(
            list(dataset_dirs),
            deblender_run,
            classifier_run,
            out_dir,
            config,
            strategy=strategy,
            overwrite=overwrite,
        )
    summary = ", ".join(f"{k} {v[-1]:.4g}" for k, v in history.items() if k != "epoch" and v)
    click.echo(f"Wrote {out_dir} ({len(history.get('epoch', []))} epochs; final {summary})")
