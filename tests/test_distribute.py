"""Phase-1 training under real tf.distribute strategies (in subprocesses)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("loss", ["l1", "symmetric"])
def test_mirrored_step_equals_single_device_step(loss):
    result = subprocess.run(
        [sys.executable, str(HERE / "distribute_helper.py"), loss],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and all("CPU" in d for d in out["devices"])
    assert out["loss_mirrored"] == pytest.approx(out["loss_single"], rel=1e-5)
    # SGD: a wrongly scaled loss (e.g. summed over replicas) would change the update by 2x.
    assert out["max_update"] > 1e-4
    assert out["max_diff"] < 1e-3 * out["max_update"]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_training_completes(deblender_data_dir, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "tfdeblend.cli.main",
        "train",
        "--net",
        "deblender",
        str(deblender_data_dir),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "4",
        "--strategy",
        "multi-worker",
    ]
    procs = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3"}
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        outputs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
    assert (out / "deblender.keras").exists() and (out / "config.yaml").exists()
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [0, 1]
    # only the chief wrote: no second run directory appeared beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_multi_worker_needs_tf_config(deblender_data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfdeblend.cli.main",
            "train",
            "--net",
            "deblender",
            str(deblender_data_dir),
            "--out",
            str(tmp_path / "o"),
            "--strategy",
            "multi-worker",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Error: --strategy multi-worker needs the TF_CONFIG" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
