"""MOSES metrics on small lists whose answers are known by hand."""

from __future__ import annotations

import math

import pytest

from training.drug import moses_metrics as mm

pytestmark = pytest.mark.unit


def test_validity_uniqueness_and_novelty_follow_moses_definitions():
    generated = ["CCO", "OCC", "c1ccccc1", None, "C1CC", "CCN"]  # OCC is CCO again; C1CC does not parse
    valid = mm.valid_smiles(generated)
    assert valid == ["CCO", "CCO", "c1ccccc1", "CCN"]
    assert mm.validity(generated) == pytest.approx(4 / 6)
    assert mm.uniqueness(valid) == pytest.approx(3 / 4)
    assert mm.novelty(valid, ["C(C)O", "C1=CC=CC=C1"]) == pytest.approx(1 / 3)  # only CCN is new
    assert mm.validity([]) == 0.0 and mm.uniqueness([]) == 0.0 and mm.novelty([], ["CCO"]) == 0.0


def test_similarity_metrics():
    assert mm.snn(["c1ccccc1O"], ["Oc1ccccc1", "CCCC"]) == pytest.approx(1.0)
    assert mm.snn(["CCCCCC"], ["c1ccncc1"]) < 0.2
    assert mm.internal_diversity(["CCO", "CCO"]) == pytest.approx(0.0)
    assert 0.5 < mm.internal_diversity(["CCO", "c1ccncc1", "CC(=O)Nc1ccc(O)cc1"]) < 1.0
    assert math.isnan(mm.snn([], ["CCO"]))


def test_moses_filters():
    assert mm.passes_filters("CC(=O)Nc1ccc(O)cc1")
    assert not mm.passes_filters("C[N+](C)(C)C")  # charged
    assert not mm.passes_filters("C1CCCCCCC1")  # eight-membered ring
    assert not mm.passes_filters("CCI")  # iodine is outside MOSES's atoms
    assert not mm.passes_filters("C=CC#N")  # MCF1: acrylonitrile-like Michael acceptor
    assert mm.filters(["CCO", "CCI"]) == pytest.approx(0.5)


def test_sa_score_ranks_simple_below_complex():
    simple = mm.sa_score(["CCO"])
    complex_ = mm.sa_score(["C[C@H]1C[C@@]2(O)[C@@H](C)C[C@H]3OC(=O)[C@]32C1"])
    assert 1.0 <= simple < complex_ <= 10.0


def test_fcd_is_zero_for_a_set_against_itself_and_larger_for_another():
    drugs = ["CC(=O)Nc1ccc(O)cc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "OC(=O)c1ccccc1OC(C)=O", "CN1CCC[C@H]1c1cccnc1"]
    alkanes = ["CCCC", "CCCCC", "CCCCCC", "CC(C)C", "CCC(C)C"]
    assert mm.fcd(drugs, drugs) == pytest.approx(0.0, abs=1e-3)
    assert mm.fcd(drugs, alkanes) > 1.0
