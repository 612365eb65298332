"""The screening baseline's data and split: the ChEMBL series really ships in the rdkit wheel, the scaffold split
keeps every scaffold on one side, and the metrics mean what they say."""

from __future__ import annotations

import numpy as np
import pytest

from training.drug.activity import (
    load_series,
    morgan,
    murcko_scaffold,
    scaffold_split,
    top_enrichment,
)

pytestmark = pytest.mark.unit


def test_the_chembl_series_is_inside_the_rdkit_wheel():
    compounds = load_series()
    assert len(compounds) == 1017
    activities = [c.activity for c in compounds]
    assert 4.0 < min(activities) < max(activities) < 9.5
    assert len({c.chembl_id for c in compounds}) == len(compounds)


def test_scaffold_split_never_puts_one_scaffold_on_both_sides():
    smiles = [c.smiles for c in load_series()[:300]]
    train, test = scaffold_split(smiles, test_fraction=0.2)
    assert sorted(train + test) == list(range(len(smiles)))
    assert 0.1 * len(smiles) < len(test) < 0.35 * len(smiles)
    assert not {murcko_scaffold(smiles[i]) for i in train} & {murcko_scaffold(smiles[i]) for i in test}
    assert scaffold_split(smiles, 0.2) == (train, test)  # deterministic


def test_fingerprints_are_bit_vectors_and_bad_smiles_are_refused():
    x = morgan(["c1ccccc1O", "CCN"])
    assert x.shape == (2, 2048) and x.dtype == np.uint8 and set(np.unique(x)) <= {0, 1}
    with pytest.raises(ValueError, match="cannot parse"):
        morgan(["C1CC"])


def test_top_enrichment_is_one_for_random_picks_and_one_over_fraction_when_perfect():
    truth = np.arange(100, dtype=float)
    assert top_enrichment(truth, truth, 0.05) == pytest.approx(20.0)
    assert top_enrichment(truth, -truth, 0.05) == 0.0
