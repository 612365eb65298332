"""The molecule generator's export: a few training steps on a few MOSES molecules give a TorchScript module whose
`sample` (the code Triton runs) answers graphs that honour the molecule_generator contract, with and without
guidance; the training graphs survive encode -> decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rdkit import Chem

from services.drug.generation.contract import MAX_NODES, MOLECULE_GENERATOR
from services.drug.generation.decode import decode
from training.drug.generator import composition_baseline, encode, fit, moses_smiles, regressor_check

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def molecules() -> tuple[list[str], np.ndarray, np.ndarray]:
    smiles = moses_smiles("train", limit=50, max_atoms=MAX_NODES)
    graphs = [g for g in (encode(s) for s in smiles) if g is not None]
    return smiles, np.stack([a for a, _ in graphs]), np.stack([b for _, b in graphs])


def test_moses_molecules_survive_encode_and_decode(molecules):
    smiles, atoms, bonds = molecules
    assert len(smiles) == 50 == len(atoms)
    for s, a, b in zip(smiles, atoms, bonds, strict=True):
        decoded, reason = decode(np.where(a >= 0, a + 1, 0).astype(np.uint8), b.astype(np.uint8))
        assert (decoded, reason) == (Chem.MolToSmiles(Chem.MolFromSmiles(s)), "ok")
    assert encode("C[N+](C)(C)C") is None and encode("CCI") is None  # charges, elements outside the vocabulary


def test_a_tiny_fit_scripts_and_samples_the_contract(molecules, tmp_path):
    torch.set_num_threads(1)
    _, atoms, bonds = molecules
    labels = np.linspace(5.0, 8.0, len(atoms))
    generator, figures = fit(atoms, bonds, labels, np.arange(len(atoms)), steps=3, regressor_steps=2, batch=16)
    assert figures["denoiser_steps"] == 3 and figures["regressor_steps"] == 2
    torch.jit.save(torch.jit.script(generator), str(tmp_path / "model.pt"))
    model = torch.jit.load(str(tmp_path / "model.pt"))
    seeds = torch.full((4, 1), 7, dtype=torch.int64)
    atom_types, bond_types = model.sample(seeds, torch.zeros(4, 1))
    outputs = {"ATOM_TYPES": atom_types.numpy(), "BOND_TYPES": bond_types.numpy()}
    MOLECULE_GENERATOR.check_outputs(outputs)
    assert outputs["ATOM_TYPES"].shape == (4, MAX_NODES)
    assert (outputs["BOND_TYPES"] == outputs["BOND_TYPES"].transpose(0, 2, 1)).all()
    assert (np.diagonal(outputs["BOND_TYPES"], axis1=1, axis2=2) == 0).all()
    assert outputs["BOND_TYPES"].max() <= 3 and outputs["ATOM_TYPES"].max() <= 7
    empty = outputs["ATOM_TYPES"] == 0  # no bond touches an empty slot
    assert not outputs["BOND_TYPES"][empty].any()
    again = model.sample(seeds, torch.zeros(4, 1))
    assert torch.equal(again[0], atom_types) and torch.equal(again[1], bond_types)  # seeded

    with torch.no_grad():  # as a caller might: the sampler turns gradients on for the regressor itself
        guided = model.sample(seeds, torch.full((4, 1), 50.0))
    MOLECULE_GENERATOR.check_outputs({"ATOM_TYPES": guided[0].numpy(), "BOND_TYPES": guided[1].numpy()})
    assert not (torch.equal(guided[0], atom_types) and torch.equal(guided[1], bond_types))


def test_the_regressor_starts_from_the_denoiser_trunk_and_the_check_reads_it(molecules):
    torch.set_num_threads(1)
    _, atoms, bonds = molecules
    labels = np.linspace(5.0, 8.0, len(atoms))
    generator, _ = fit(atoms, bonds, labels, np.arange(len(atoms)), steps=2, regressor_steps=0, batch=16)
    trunk, start = generator.denoiser.trunk.state_dict(), generator.regressor.trunk.state_dict()
    assert all(torch.equal(trunk[k], start[k]) for k in trunk)
    check = regressor_check(generator, atoms, bonds, labels, ts=(1, 25))
    assert list(check) == ["t=1", "t=25"]
    for m in check.values():
        assert -1.0 <= m["spearman"] <= 1.0 and 0.0 <= m["top5_enrichment"] <= 20.0
    assert regressor_check(generator, atoms, bonds, labels, ts=(1,)) == {"t=1": check["t=1"]}  # seeded noise


def test_the_composition_baseline_recovers_a_count_rule(molecules):
    _, atoms, bonds = molecules
    activity = 5.0 + 0.3 * (atoms == 1).sum(axis=1) - 0.2 * (bonds == 2).sum(axis=(1, 2)) / 2  # nitrogens, C=X bonds
    train, held = np.arange(30), np.arange(30, len(atoms))
    m = composition_baseline(atoms, bonds, activity[train], train, atoms[held], bonds[held], activity[held])
    assert m["spearman"] > 0.8  # ridge-shrunk on 30 molecules, ties among 20
