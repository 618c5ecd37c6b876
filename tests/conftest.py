"""Shared pytest configuration.

Fixtures are grouped by the module that owns them and loaded here:
``fixtures_data`` (simulated catalogs and datasets) and ``fixtures_models`` (tiny trained runs and
exported models). Session-scoped fixtures are built once per test run and shared.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fixtures_data import *  # noqa: E402,F401,F403
from fixtures_models import *  # noqa: E402,F401,F403
