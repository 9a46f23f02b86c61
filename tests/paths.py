"""Locations of the repository and of the shared test data."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("AFD_TRT_SHARED_DATA", REPO.parent / "shared" / "data"))
TADNE_GRID = SHARED_DATA / "tadne_grid_3072.jpg"
