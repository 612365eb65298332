import csv
from pathlib import Path

import numpy as np
import pytest

from training.drug import chemprop_compare as cc
from training.drug.activity import Compound, load_series, murcko_scaffold

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def compounds() -> list[Compound]:
    return load_series()


@pytest.mark.parametrize("split", cc.SPLITS)
def test_validation_is_carved_from_training_and_parts_are_disjoint(compounds: list[Compound], split: str) -> None:
    smiles = [c.smiles for c in compounds]
    train, test = cc.split_indices(smiles, split)
    fit, val = cc.carve_validation(smiles, train, split)
    assert set(fit) | set(val) == set(train)
    assert not set(fit) & set(val) and not set(fit) & set(test) and not set(val) & set(test)
    assert len(fit) + len(val) + len(test) == len(compounds)
    assert 0.05 * len(train) < len(val) <= 0.1 * len(train) + 1
    if split == "scaffold":
        scaffolds = {name: {murcko_scaffold(smiles[i]) for i in part} for name, part in (("fit", fit), ("val", val))}
        assert not scaffolds["fit"] & scaffolds["val"]


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        cc.split_indices(["C"], "temporal")


def test_csvs_hold_each_part_and_the_prediction_input_hides_the_activity(
    compounds: list[Compound], tmp_path: Path
) -> None:
    parts = {"train": [0, 2, 4], "val": [1], "test": [3, 5]}
    paths = cc.write_split_csvs(compounds, parts, tmp_path)
    assert set(paths) == {"train", "val", "test", "test_input"}
    for name, indices in parts.items():
        with open(paths[name], newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [(r["chembl_id"], r["smiles"], float(r["activity"])) for r in rows] == [
            (compounds[i].chembl_id, compounds[i].smiles, compounds[i].activity) for i in indices
        ]
    with open(paths["test_input"], newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["chembl_id", "smiles"]
        assert [r["chembl_id"] for r in reader] == [compounds[i].chembl_id for i in parts["test"]]


def test_predictions_are_read_in_the_asked_order(tmp_path: Path) -> None:
    path = tmp_path / "preds.csv"
    path.write_text("chembl_id,smiles,activity\nB,CC,6.5\nA,C,7.25\n")
    np.testing.assert_allclose(cc.read_predictions(path, ["A", "B"]), [7.25, 6.5])
    with pytest.raises(ValueError, match="no prediction for 1"):
        cc.read_predictions(path, ["A", "Z"])


def test_train_command_passes_train_val_test_in_that_order(tmp_path: Path) -> None:
    command = cc.train_command(tmp_path, epochs=3, ensemble=2, seed=7, venv=Path("/v"))
    start = command.index("--data-path") + 1
    assert command[start : start + 3] == [str(tmp_path / f"{p}.csv") for p in ("train", "val", "test")]
    assert command[:2] == ["/v/bin/chemprop", "train"] and "cpu" in command
