"""Simulation speed: tfdeblend (only the needed bands, all cores) vs plain BTK (6 bands, 1 job).

Prints a markdown table of blends/s (median of ``--repeats`` runs) for 2-galaxy 120x120 LSST
stamps drawn from the built-in synthesized catalog::

    python benchmarks/simulate.py --count 64 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def _ours(table, count: int, jobs: int, bands: tuple[str, ...]) -> float:
    from tfdeblend.simulate import SimConfig, simulate

    cfg = SimConfig(kind="deblender", count=count, bands=bands, seed=0)
    start = time.perf_counter()
    for _ in simulate(cfg, table=table, jobs=jobs):
        pass
    return count / (time.perf_counter() - start)


def _plain_btk(table, count: int) -> float:
    import btk

    catalog = btk.catalog.CatsimCatalog(table)
    sampling = btk.sampling_functions.DefaultSampling(
        stamp_size=24.0, max_number=2, min_number=2, max_mag=25.3, seed=0
    )
    survey = btk.survey.get_surveys("LSST")
    generator = btk.draw_blends.CatsimGenerator(
        catalog, sampling, survey, batch_size=count, njobs=1, add_noise="all", seed=0
    )
    start = time.perf_counter()
    next(generator)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=64, help="blends per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    from tfdeblend.catalog import load_default_catalog

    table = load_default_catalog()
    rows = [
        ("plain BTK, 6 bands (ugrizy), njobs=1", lambda: _plain_btk(table, args.count)),
        ("tfdeblend, 6 bands, 1 job", lambda: _ours(table, args.count, 1, tuple("ugrizy"))),
        ("tfdeblend, 3 bands (g,r,i), 1 job", lambda: _ours(table, args.count, 1, tuple("gri"))),
        (
            f"tfdeblend, 3 bands (g,r,i), {args.jobs} jobs",
            lambda: _ours(table, args.count, args.jobs, tuple("gri")),
        ),
    ]
    print(f"{args.count} two-galaxy 120x120 LSST blends per run, median of {args.repeats} runs\n")
    print("| simulator | blends/s |")
    print("|---|---|")
    for name, run in rows:
        rates = [run() for _ in range(args.repeats)]
        print(f"| {name} | {statistics.median(rates):.1f} |", flush=True)


if __name__ == "__main__":
    main()
