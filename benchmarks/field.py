"""Whole-image benchmark: seconds and peak memory of ``tfdeblend run`` on a simulated field,
next to sep (detection + FLUX_AUTO, the evaluation's baseline) on the same image.

Draws (or reads) an LSST g,r,i field with ``tfdeblend simulate field`` and runs, in a fresh
process each so that peak RSS is the run's own (``/usr/bin/time``-like, from
``resource.getrusage`` of the child):

- ``tfdeblend run FIELD -o OUT`` (:func:`tfdeblend.run.run_image`: read, detect, group, peel,
  stitch, write), ``--repeat`` times;
- sep's whole-image baseline (:meth:`tfdeblend.evaluate.baselines.SepBaseline.run_image`).

Prints a markdown table (median seconds, galaxies/s, stamps/s, peak RSS) for
``docs/benchmarks.md``.

Usage::

    python benchmarks/field.py --size 2048 --repeat 3
    python benchmarks/field.py --field /tmp/field4096 --repeat 1 --workers 2
    python benchmarks/field.py --size 1024 --repeat 2 --detect-threshold 1.5 --detect-threshold 0.8
    python benchmarks/field.py --size 1024 --repeat 2 --scene default \
        --scene residual_detection=false

Several scene settings (``--scene`` ``key=value[,key=value]`` of
:class:`tfdeblend.scene.SceneConfig`, ``default`` for its defaults; ``--detect-threshold T`` is
``--scene detect_threshold=T``) are timed in turn, one run of each per repetition, on the same
field.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
kind, field, out, workers, options = sys.argv[1:6]
start = time.perf_counter()
if kind == "tfdeblend":
    import yaml
    from tfdeblend.run import run_image
    from tfdeblend.scene import SceneConfig
    pairs = [item.split("=", 1) for item in options.split(",")] if options != "default" else []
    scene = SceneConfig().replace(**{k.strip(): yaml.safe_load(v) for k, v in pairs})
    summary = run_image(field, out, overwrite=True, progress=False, scene=scene,
                        workers=int(workers) if workers != "0" else None)
    result = {"objects": summary["n_objects"], "stamps": summary["n_stamps"]}
else:
    from tfdeblend.evaluate.baselines import get_baseline
    from tfdeblend.image_io import open_image
    source = open_image(field, "g,r,i")
    catalog = get_baseline("sep").run_image(source, progress=False)
    result = {"objects": len(catalog["x"]), "stamps": 0}
result["seconds"] = time.perf_counter() - start
result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print("RESULT " + json.dumps(result))
"""


def _run(kind: str, field: Path, out: Path, workers: int, options: str = "default") -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(field), str(out), str(workers), options],
        capture_output=True, text=True, env=env, check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][7:])  # peak RSS: the child's own (Dask workers not included)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="field side, pixels")
    parser.add_argument("--seed", type=int, default=3001)
    parser.add_argument("--field", default=None, help="use this field directory instead")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="Dask local workers (0: none)")
    parser.add_argument("--detect-threshold", action="append", default=[],
                        help="scene detection threshold(s) to time (default: the scene's)")
    parser.add_argument("--scene", action="append", default=[],
                        help="scene settings to time: key=value[,key=value], or default")
    args = parser.parse_args()
    settings = ([f"detect_threshold={t}" for t in args.detect_threshold] + args.scene
                or ["default"])

    tmp = Path(tempfile.mkdtemp(prefix="tfdeblend-field-bench-"))
    field = Path(args.field) if args.field else tmp / f"field{args.size}"
    if not args.field:
        from tfdeblend.field import FieldConfig, simulate_field

        started = time.perf_counter()
        simulate_field(FieldConfig(size=args.size, seed=args.seed), field, progress=False)
        print(f"simulated {field} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeat):  # in turn: one run of each per repetition
        for setting in settings:
            runs.setdefault(("tfdeblend", setting), []).append(
                _run("tfdeblend", field / "field.fits", tmp / "out.fits", args.workers,
                     setting))
        runs.setdefault(("sep", "default"), []).append(
            _run("sep", field / "field.fits", tmp / "out.fits", 0))
    rows = []
    for (kind, setting), done in runs.items():
        seconds = sorted(r["seconds"] for r in done)
        rows.append((kind, setting, done, seconds, seconds[len(seconds) // 2]))
    from astropy.io import fits

    height = fits.getheader(field / "field.fits")["NAXIS2"]
    width = fits.getheader(field / "field.fits")["NAXIS1"]
    print(f"| method | image | seconds ({args.repeat} runs) | median s | galaxies | galaxies/s | "
          "stamps/s | peak RSS MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for kind, setting, done, seconds, median in rows:
        objects = done[0]["objects"]
        stamps = done[0]["stamps"]
        label = kind if kind != "tfdeblend" or not args.workers else (
            f"tfdeblend, {args.workers} Dask workers")
        if kind == "tfdeblend" and setting != "default":
            label += f", {setting}"
        rss = max(r["rss_mib"] for r in done)
        print(f"| {label} | {width}x{height} g,r,i | {', '.join(f'{s:.1f}' for s in seconds)} | "
              f"{median:.1f} | {objects} | {objects / median:.1f} | "
              f"{(stamps / median) if stamps else 0:.1f} | {rss:.0f} |")
    sep_median = rows[-1][4]
    for _kind, setting, _, _, median in rows[:-1]:
        print(f"\ntfdeblend ({setting}) / sep time ratio (medians): {median / sep_median:.0f}")


if __name__ == "__main__":
    main()
