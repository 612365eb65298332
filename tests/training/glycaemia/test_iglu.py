import numpy as np
import pytest

from training.glycaemia import iglu
from training.glycaemia.sequences import windows

pytestmark = pytest.mark.unit


def test_bundled_hall_data_is_found_without_importing_r():
    path = iglu.data_path()
    assert path.is_file() and path.name == iglu.HALL
    with pytest.raises(FileNotFoundError):
        iglu.data_path("no_such_file.csv")


def test_hall_traces_parse_onto_the_five_minute_grid():
    raw = iglu.read_traces(iglu.data_path())
    assert len(raw) == 19
    minutes, glucose = raw["2133-024"]
    assert minutes[0] == 0 and (np.diff(minutes) > 0).all()
    assert 39 <= glucose.min() and glucose.max() <= 401

    grid = iglu.load_grid()
    assert set(grid) == set(raw)
    n = sum(len(windows(g)[1]) for g in grid.values())
    assert n > 20_000  # about 6 days per subject at 5 min, less gaps
    assert 0 < sum(windows(g)[1].sum() for g in grid.values()) < n
