"""The drug services' chemistry: RDKit's own reason for a refused structure, standardisation that keys salts and
charge states of one compound alike, the screening filters, and the dense graph the activity model takes."""

from __future__ import annotations

import numpy as np
import pytest

from services.drug import chem
from services.drug.screening.contract import DRUG_ACTIVITY

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("CN(C)(C)(C)C", "Explicit valence for atom # 1 N, 5"),
        ("c1cccc1", "Can't kekulize"),
        ("C1CC", "SMILES syntax error"),
        ("", "empty structure"),
    ],
)
def test_an_unreadable_structure_is_refused_with_rdkits_reason(text: str, reason: str):
    with pytest.raises(chem.InvalidMolecule, match=reason):
        chem.parse(text)


def test_a_mol_block_is_read_too():
    from rdkit import Chem

    block = Chem.MolToMolBlock(Chem.MolFromSmiles("CCO"))
    assert chem.standardise(chem.parse(block)).smiles == "CCO"


def test_salt_and_charge_forms_of_one_compound_share_an_inchikey():
    forms = ["CC(=O)Oc1ccccc1C(=O)O", "CC(=O)Oc1ccccc1C(=O)[O-].[Na+]", "OC(=O)c1ccccc1OC(C)=O.O"]
    keys = {chem.standardise(chem.parse(s)).inchikey for s in forms}
    assert keys == {"BSYNRYMUTXBXSQ-UHFFFAOYSA-N"}  # aspirin


def test_pains_and_size_refuse_brenk_only_flags():
    rhodanine = chem.screen(chem.parse("O=C1NC(=S)SC1=Cc1ccccc1"))  # ene_rhod, a PAINS family
    assert any(r.startswith("PAINS ene_rhod") for r in rhodanine.refused)
    big = chem.screen(chem.parse("C" * 60))
    assert any("heavy atoms" in r for r in big.refused)
    ester = chem.screen(chem.parse("CC(=O)Oc1ccccc1C(=O)O"))
    assert ester.refused == [] and ester.alerts == ["Brenk phenol_ester"]


def test_the_dense_graph_meets_the_activity_contract():
    mols = [chem.parse(s) for s in ("c1ccccc1S(=O)(=O)N", "C#N", "CC(=O)[O-]")]
    batch = chem.featurise_many(mols)
    DRUG_ACTIVITY.check_inputs(batch)
    atoms, bonds = batch["ATOMS"][0], batch["BONDS"][0]
    assert (atoms.sum(axis=1) > 0).sum() == 10  # 10 heavy atoms, the rest padding
    assert (bonds == bonds.T).all() and (bonds[:6, :6] == 4).sum() == 12  # the benzene ring, aromatic both ways
    assert batch["BONDS"][1][0, 1] == 3  # the nitrile's triple bond
    np.testing.assert_array_equal(chem.featurise_many([])["ATOMS"].shape, (0, chem.MAX_ATOMS, chem.ATOM_FEATURES))
