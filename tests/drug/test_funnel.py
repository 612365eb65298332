"""The screening funnel's decisions on plain values: invalid structures with RDKit's reason, duplicates by InChIKey
(a salt form of a molecule seen before is a duplicate), property/PAINS refusals, scores with their uncertainty, the
ADMET pre-filter, and the hit's graph mutation keyed by the InChIKey."""

from __future__ import annotations

import numpy as np
import pytest
from medstream.events.v1 import common_pb2, drug_pb2

from services.common.deadletter import SourceRecord
from services.common.graph_events import from_mutation
from services.common.topics import DRUG_LIBRARY
from services.common.worker import Accepted
from services.drug.screening import funnel
from services.drug.screening.contract import ADMET_ENDPOINTS, TARGET

pytestmark = pytest.mark.unit
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def accepted(
    molecule_id: str, smiles: str = "", molblock: str = "", library: str = "test"
) -> Accepted[drug_pb2.LibraryMolecule]:
    msg = drug_pb2.LibraryMolecule(molecule_id=molecule_id, library=library, smiles=smiles, molblock=molblock)
    return Accepted(SourceRecord(DRUG_LIBRARY.name, 0, 7, molecule_id.encode(), msg.SerializeToString()), msg)


def test_triage_sorts_a_batch_into_invalid_duplicate_refused_and_candidates():
    batch = [
        accepted("a", ASPIRIN),
        accepted("b", "CC(=O)Oc1ccccc1C(=O)[O-].[Na+]"),  # aspirin's sodium salt: the same parent
        accepted("c", "c1ccccc1N(=O)=O=C"),  # valence error
        accepted("d", "C1CC"),  # unclosed ring
        accepted("e"),  # no structure
        accepted("f", "O=C(C=Cc1ccc(O)cc1)c1ccccc1"),  # a chalcone-like Michael acceptor (Brenk alert)
        accepted("g", "Oc1ccc(N=Nc2ccccc2)cc1"),  # azo phenol: PAINS azo_A
        accepted("h", "C" * 60),  # over the model's 48 heavy atoms
        accepted("i", "[2H]C([2H])([2H])" + "C" * 46),  # 47 heavy atoms, but deuterium takes model slots too
    ]
    t = funnel.triage(batch, seen={})
    assert {a.message.molecule_id for a, _ in t.invalid} == {"c", "d", "e"}
    reasons = dict((a.message.molecule_id, r) for a, r in t.invalid)
    assert "valence" in reasons["c"].lower() and "syntax error" in reasons["d"].lower()
    assert "exactly one of smiles and molblock" in reasons["e"]
    assert t.duplicates == 1
    assert t.refused == {"PAINS": 1, "property": 2}
    assert [c.accepted.message.molecule_id for c in t.candidates] == ["a", "f"]
    assert any(alert.startswith("Brenk") for alert in t.candidates[1].screen.alerts)
    stages = {o.molecule_id: o.stage for o in t.outcomes}
    assert stages == dict.fromkeys("cde", "invalid") | {
        "b": "duplicate",
        "g": "refused",
        "h": "refused",
        "i": "refused",
    }
    assert next(o for o in t.outcomes if o.molecule_id == "b").reason == "the structure of a"
    assert len(t.seen) == 5 and t.seen[funnel.seen_key("test", t.candidates[0].parent.inchikey)] == "a"


def test_a_structure_seen_in_an_earlier_batch_of_its_library_is_a_duplicate():
    first = funnel.triage([accepted("a", ASPIRIN)], seen={})
    again = funnel.triage([accepted("z", "OC(=O)c1ccccc1OC(C)=O")], seen=first.seen)  # drawn differently
    assert again.duplicates == 1 and again.candidates == [] and again.seen == {}
    replay = funnel.triage([accepted("a", ASPIRIN)], seen=first.seen)  # redelivered after a crash
    assert replay.duplicates == 0 and len(replay.candidates) == 1
    other = funnel.triage([accepted("z", ASPIRIN, library="next-campaign")], seen=first.seen)
    assert other.duplicates == 0 and len(other.candidates) == 1


def test_scores_rank_on_a_lower_confidence_bound():
    confident, lucky = funnel.scores(np.array([[7.1, 7.0, 7.2, 7.1, 7.1], [9.0, 5.0, 8.0, 6.0, 7.5]]))
    assert confident.activity == pytest.approx(7.1) and lucky.activity == pytest.approx(7.1)
    assert confident.rank > lucky.rank and lucky.uncertainty > 1.0


def test_admet_flags_at_the_contract_threshold_and_refuses_only_confident_calls():
    assert ADMET_ENDPOINTS == ("hERG", "DILI", "ClinTox", "AMES")
    probabilities = [0.55, 0.99, 0.85, 0.2]
    assert funnel.admet_flags(probabilities) == ["hERG 0.55", "DILI 0.99", "ClinTox 0.85"]
    assert funnel.admet_refusals(probabilities) == []  # DILI and ClinTox flag only
    assert funnel.admet_refusals([0.85, 0.1, 0.1, 0.9]) == ["hERG 0.85", "AMES 0.90"]


def test_a_hit_is_keyed_by_its_inchikey_in_the_topic_and_the_graph():
    t = funnel.triage([accepted("a", ASPIRIN)], seen={})
    score = funnel.scores(np.array([[7.5, 7.6, 7.4, 7.5, 7.5]]))[0]
    h = funnel.hit(t.candidates[0], score, [0.1, 0.2, 0.6, 0.1], common_pb2.ModelRef(name="m", version="1"), "svc")
    assert h.inchikey == "BSYNRYMUTXBXSQ-UHFFFAOYSA-N" and h.target == TARGET
    assert h.rank_score == pytest.approx(score.rank) and h.provenance.source_offset == 7
    mutation = funnel.graph_mutation(h)
    again = funnel.graph_mutation(h)
    assert mutation.mutation_id == again.mutation_id  # a replay writes the same mutation
    _, relationships = from_mutation(mutation)
    active = next(r for r in relationships if r.type == "PREDICTED_ACTIVE")
    assert (active.start.label, active.start.key, active.end.label) == ("Compound", h.inchikey, "Target")
    assert active.properties["model"] == "m" and active.properties["version"] == "1"
    assert f"{ADMET_ENDPOINTS[2]} 0.60" in active.start.properties["admet_flags"]
