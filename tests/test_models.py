"""Tests of the RDN deblender, the VGG-16 classifier, their layers and presets."""

import keras
import numpy as np
import pytest

from tfdeblend.errors import TfdeblendError
from tfdeblend.models.classifier import build_classifier, classifier_param_count
from tfdeblend.models.layers import DepthToSpace, SpaceToDepth
from tfdeblend.models.presets import (
    PRESETS,
    ClassifierConfig,
    RDNConfig,
    get_classifier_config,
    get_rdn_config,
)
from tfdeblend.models.rdn import build_rdn, rdn_param_count


def conv(k, a, b):
    return k * k * a * b + b


def rdn_formula(D, C, G, G0, r, U, bands, k=3):
    """Closed-form parameter count of the RDN, written out independently of the library."""
    c_in = bands * r * r
    shallow = conv(k, c_in, G0) + conv(k, G0, G0)
    block = sum(conv(k, G0 + c * G, G) for c in range(C)) + conv(1, G0 + C * G, G0)
    fusion = conv(1, D * G0, G0) + conv(k, G0, G0)
    up = conv(k, G0, U * r * r) + conv(k, U, bands)
    return shallow + D * block + fusion + up


def vgg_formula(filters, units, bands, stamp, classes=4, bn=True):
    total, a = 0, bands
    for n, f in zip((2, 2, 3, 3, 3), filters):
        for _ in range(n):
            total += 9 * a * f + (4 * f if bn else f)
            a = f
    side = stamp // 32  # 80 -> 40 -> 20 -> 10 -> 5 -> 2
    flat = side * side * a
    return total + flat * units + units + units * units + units + units * classes + classes


def test_paper_rdn_parameter_count_matches_formula():
    config = get_rdn_config("paper", 3, 80)
    assert (config.num_blocks, config.layers_per_block, config.growth) == (16, 8, 64)
    model = build_rdn(config)
    expected = rdn_formula(16, 8, 64, 64, 1, 64, 3)
    assert model.count_params() == expected == rdn_param_count(config)
    assert expected == 22_012_611


@pytest.mark.parametrize("preset", ["cpu", "tiny"])
@pytest.mark.parametrize("bands", [1, 3])
def test_rdn_parameter_count_and_shapes(preset, bands):
    config = get_rdn_config(preset, bands, 80)
    model = build_rdn(config)
    expected = rdn_formula(
        config.num_blocks,
        config.layers_per_block,
        config.growth,
        config.features,
        config.downscale,
        config.upsample_features,
        bands,
    )
    assert model.count_params() == expected
    assert model.input_shape == (None, 80, 80, bands)
    assert model.output_shape == (None, 80, 80, bands)
    out = model(np.zeros((2, 80, 80, bands), "float32"))
    assert out.shape == (2, 80, 80, bands)


def test_rdn_reads_like_the_figure():
    config = get_rdn_config("cpu", 3, 80)
    model = build_rdn(config)
    names = [layer.name for layer in model.layers]
    assert [n for n in names if n.endswith("local_residual")] == [
        f"rdb{d}_local_residual" for d in range(4)
    ]
    assert sum(n.startswith("rdb0_conv") for n in names) == config.layers_per_block
    for name in (
        "shallow_conv1",
        "shallow_conv2",
        "global_fusion_1x1",
        "global_fusion_3x3",
        "global_residual",
        "depth_to_space",
        "output",
    ):
        assert name in names
    # The dense blocks run at a quarter of the resolution.
    assert model.get_layer("rdb0_conv0").output.shape[1:3] == (20, 20)


@pytest.mark.parametrize("preset", ["paper", "cpu", "tiny"])
def test_classifier_parameter_count_and_shapes(preset):
    config = get_classifier_config(preset, 3, 80)
    model = build_classifier(config)
    expected = vgg_formula(config.filters, config.dense_units, 3, 80)
    assert model.count_params() == expected == classifier_param_count(config)
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    dense = [la for la in model.layers if isinstance(la, keras.layers.Dense)]
    assert (len(convs), len(dense)) == (13, 3)  # VGG-16
    assert model.output_shape == (None, 4)


def test_paper_classifier_is_vgg16_widths():
    config = get_classifier_config("paper")
    assert config.filters == (64, 128, 256, 512, 512)
    assert config.dense_units == 4096


def test_classifier_without_batch_norm_formula():
    config = ClassifierConfig(
        channels=2,
        stamp_size=64,
        filters=(2, 2, 4, 4, 4),
        dense_units=8,
        dropout=0.0,
        batch_norm=False,
    )
    model = build_classifier(config)
    assert model.count_params() == vgg_formula((2, 2, 4, 4, 4), 8, 2, 64, bn=False)


def test_space_depth_round_trip_is_lossless():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    down = SpaceToDepth(4)(x)
    assert down.shape == (2, 2, 2, 48)
    np.testing.assert_array_equal(np.asarray(DepthToSpace(4)(down)), x)
    np.testing.assert_array_equal(np.asarray(SpaceToDepth(1)(x)), x)


@pytest.mark.parametrize(
    "builder,config",
    [
        (build_rdn, get_rdn_config("tiny", 3, 80)),
        (build_classifier, get_classifier_config("tiny", 3, 80)),
    ],
)
def test_keras_round_trip_safe_mode(tmp_path, builder, config):
    model = builder(config)
    x = np.random.default_rng(1).normal(size=(3, 80, 80, 3)).astype("float32")
    before = np.asarray(model(x, training=False))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), before)
    assert not any(type(la).__name__ == "Lambda" for la in loaded.layers)
    assert {type(la).__name__ for la in loaded.layers} >= (
        {"SpaceToDepth", "DepthToSpace"} if builder is build_rdn else {"MaxPooling2D"}
    )


def test_mixed_precision_output_is_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        rdn = build_rdn(get_rdn_config("tiny", 3, 80))
        vgg = build_classifier(get_classifier_config("tiny", 3, 80))
    finally:
        keras.config.set_dtype_policy(previous)
    x = np.ones((1, 80, 80, 3), "float32")
    assert rdn.get_layer("shallow_conv1").compute_dtype == "float16"
    assert rdn(x).dtype == "float32"
    assert vgg(x).dtype == "float32"


def test_presets_and_config_errors():
    assert set(PRESETS) == {"paper", "cpu", "tiny"}
    with pytest.raises(TfdeblendError, match="unknown preset"):
        get_rdn_config("huge")
    with pytest.raises(TfdeblendError, match="multiple of the RDN downscale"):
        RDNConfig(stamp_size=78, downscale=4)
    with pytest.raises(TfdeblendError, match="5 positive"):
        ClassifierConfig(filters=(1, 2, 3))
    with pytest.raises(TfdeblendError, match="unknown RDNConfig"):
        RDNConfig.from_dict({"depth": 3})
    config = get_rdn_config("cpu", 6, 40)
    assert RDNConfig.from_dict(config.to_dict()) == config
    cc = get_classifier_config("cpu")
    assert ClassifierConfig.from_dict(cc.to_dict()) == cc


def test_tiny_train_step_is_fast():
    import time

    model = build_rdn(get_rdn_config("tiny", 3, 80))
    model.compile("adam", "mae")
    x = np.zeros((8, 80, 80, 3), "float32")
    model.train_on_batch(x, x)
    start = time.perf_counter()
    model.train_on_batch(x, x)
    assert time.perf_counter() - start < 1.0


def test_asinh_stretch_classifier_round_trips_and_keeps_the_parameter_count(tmp_path):
    from tfdeblend.models.layers import AsinhStretch
    from tfdeblend.models.presets import get_classifier_config

    config = get_classifier_config("tiny", channels=3, stamp_size=80).replace(input_stretch=0.01)
    model = build_classifier(config)
    assert model.get_layer("asinh_stretch") is not None
    assert model.count_params() == classifier_param_count(config)
    stretch = AsinhStretch(0.01)
    values = stretch(np.array([[0.0, 0.01, 1.0, -1.0]], dtype="float32")).numpy()[0]
    np.testing.assert_allclose(values, [0.0, np.arcsinh(1) / np.arcsinh(100), 1.0, -1.0],
                               rtol=1e-6)
    path = tmp_path / "c.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).normal(size=(2, 80, 80, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
