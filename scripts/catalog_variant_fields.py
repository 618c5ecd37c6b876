"""Fields drawn from catalogs unlike the built-in one, to check a change on data it was not made on.

The built-in catalog (``tfdeblend.catalog``) matches OneDegSq's statistics; a real catalog
differs from it. This script draws 512^2 fields from the built-in catalog with one property
moved at a time:

- ``big``: every bulge and disk 1.6 times larger; ``small``: 0.6 times;
- ``bright``: every magnitude 1 brighter (twice the galaxies at i < 25.3, many saturated);
- ``red``: g 0.6 and r 0.2 magnitudes fainter; ``blue``: g 0.4 and r 0.15 brighter.

Usage::

    python scripts/catalog_variant_fields.py OUT_DIR VARIANT FIELD_SEED CATALOG_SEED [PRESET]

``PRESET`` is one of :data:`tfdeblend.simulate.CONDITION_PRESETS` (default ``nominal``). The
fields of ``docs/model_card.md`` ("Detection weighted for the image's own galaxies"):
validation ``big small bright red blue`` with field seeds 5001-5005 and catalog seeds
7000-7004 (nominal); held-out ``bright`` 5201/7201 (nominal), 5202/7202 (year1), 5203/7203
(hsc), 5205/7205 (psf1.5) and ``big`` 5204/7204 (nominal).
"""

from __future__ import annotations

import sys

import numpy as np

from tfdeblend.catalog import synthesize_catalog
from tfdeblend.field import FieldConfig, simulate_field
from tfdeblend.simulate import CONDITION_PRESETS

SIZES = ("a_b", "b_b", "a_d", "b_d")
VARIANTS = ("big", "small", "bright", "red", "blue")


def variant(name: str, seed: int, area_deg2: float = 0.02):
    """The built-in catalog (``seed``) with the property ``name`` moved (module docstring)."""
    table = synthesize_catalog(area_deg2=area_deg2, seed=seed, max_mag=26.5)

    def shift(column: str, by: float) -> None:
        table[column] = np.asarray(table[column]) + by

    if name in ("big", "small"):
        for column in SIZES:
            table[column] = np.asarray(table[column]) * (1.6 if name == "big" else 0.6)
    elif name == "bright":
        for band in "ugrizy":
            shift(f"{band}_ab", -1.0)
    elif name == "red":
        shift("u_ab", 0.8), shift("g_ab", 0.6), shift("r_ab", 0.2)
    elif name == "blue":
        shift("g_ab", -0.4), shift("r_ab", -0.15)
    else:
        raise SystemExit(f"unknown variant {name!r}: one of {', '.join(VARIANTS)}")
    return table


def main(argv: list[str]) -> None:
    if len(argv) not in (4, 5):
        raise SystemExit(__doc__.split("Usage::")[1].split("``PRESET``")[0].strip())
    out, name, field_seed, catalog_seed = argv[0], argv[1], int(argv[2]), int(argv[3])
    preset = CONDITION_PRESETS[argv[4] if len(argv) == 5 else "nominal"]
    config = FieldConfig(size=512, seed=field_seed, **preset)
    simulate_field(config, out, progress=False, table=variant(name, catalog_seed), overwrite=True)
    print(f"{out}: {name} catalog (seed {catalog_seed}), field seed {field_seed}")


if __name__ == "__main__":
    main(sys.argv[1:])
