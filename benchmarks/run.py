"""Inference benchmark: blends/s and peak memory of ``tfdeblend run`` next to ``sep``.

Renders (or reads) N 2-galaxy stamps, writes them as a blends FITS file, times
:func:`tfdeblend.run.run_file` (what ``tfdeblend run`` calls: FITS read, peel, FITS write)
and ``sep`` with the DES Y6 settings on the g+r+i coadd
(:func:`tfdeblend.evaluate.baselines.run_sep`) on the same stamps in the same process, and prints
a markdown table. Peak memory: ``tracemalloc`` (Python allocations) and the process's peak RSS
(``resource.getrusage``; TensorFlow's own buffers only show there).

Usage::

    python benchmarks/run.py --n 1000 [--model saved_models/tfdeblend_cpu] [--blends b.fits]
    python benchmarks/run.py --n 64 --model /tmp/m --batch-size 32   # quick check
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stamps(n: int, seed: int) -> tuple[np.ndarray, tuple[str, ...]]:
    from tfdeblend.simulate import SimConfig, simulate_arrays

    config = SimConfig(kind="test", n_gal=2, count=n, seed=seed)
    arrays = simulate_arrays(config, jobs=2)
    return arrays["blend"].astype(np.float32), tuple(config.bands)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of 2-galaxy stamps")
    parser.add_argument("--model", default=None, help="model directory (default: shipped)")
    parser.add_argument("--blends", default=None, help="use this blends FITS file instead")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from astropy.io import fits

    from tfdeblend.evaluate.baselines import run_sep
    from tfdeblend.export import load_model
    from tfdeblend.fitsio import read_blends
    from tfdeblend.run import run_file

    model = load_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="tfdeblend-bench-"))
    if args.blends:
        src = Path(args.blends)
        images, _, bands = read_blends(
            src, bands=model.bands, stamp_size=model.stamp_size, channels_last=True
        )
        images = images[: args.n]
    else:
        print(f"rendering {args.n} 2-galaxy stamps with BTK ...")
        images, bands = _stamps(args.n, args.seed)
        src = tmp / "blends.fits"
        header = fits.Header({"BANDS": ",".join(bands), "BUNIT": "electron"})
        fits.PrimaryHDU(np.transpose(images, (0, 3, 1, 2)), header=header).writeto(src)
    n = len(images) if args.blends is None else min(args.n, len(images))

    # warm-up (graph tracing) on a few stamps, not timed
    model.deblend(images[: min(4, n)])

    rows = []
    tracemalloc.start()
    start = time.perf_counter()
    summary = run_file(
        src,
        tmp / "out.fits",
        model=model,
        batch_size=args.batch_size,
        progress=False,
        overwrite=True,
    )
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows.append(
        (
            f"tfdeblend run ({model.name} v{model.version}, batch {args.batch_size})",
            summary["n_blends"],
            seconds,
            peak / 2**20,
            _rss_mib(),
        )
    )

    noise = np.array([{"g": 158.0, "r": 361.0, "i": 430.0}.get(b, 300.0) for b in bands])
    tracemalloc.start()
    start = time.perf_counter()
    run_sep(images[:n], noise, bands, progress=False)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows.append(("sep (DES Y6 settings, g+r+i coadd)", n, seconds, peak / 2**20, _rss_mib()))

    print()
    print("| method | stamps | seconds | blends/s | peak Python MiB | peak RSS MiB (process) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, count, secs, py_peak, rss in rows:
        print(f"| {name} | {count} | {secs:.1f} | {count / secs:.1f} | {py_peak:.0f} | {rss:.0f} |")
    quality = ", ".join(f"{k} {v}" for k, v in summary["quality"].items())
    print(f"\nquality of the {summary['n_blends']} peels: {quality}")


if __name__ == "__main__":
    main()
