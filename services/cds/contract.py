"""The cds_multimodal model's contract: a note embedding and the lab panel in; class probabilities, lab
attributions and the no-labs probability out; the classes in output order. training/cds/ builds it against this;
model_repository/cds_multimodal/config.pbtxt serves it."""

from __future__ import annotations

from dataclasses import dataclass

from services.cds.labs import PANEL
from services.common.model_contract import ModelContract, TensorSpec

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2 (services/common/sentences.py)


@dataclass(frozen=True, slots=True)
class ClassLabel:
    key: str
    name: str
    disease_id: str | None  # the HPO/OMIM disease where the knowledge graph knows it
    rare: bool


# The model's classes in PROBS order. The synthetic cohort (training/cds/diseases.py) gives each a presentation.
CLASSES: tuple[ClassLabel, ...] = (
    ClassLabel("type2_diabetes", "Type 2 diabetes mellitus", None, False),
    ClassLabel("hypertension", "Essential hypertension", None, False),
    ClassLabel("ckd_stage3", "Chronic kidney disease stage 3", None, False),
    ClassLabel("iron_deficiency_anaemia", "Iron-deficiency anaemia", None, False),
    ClassLabel("community_acquired_pneumonia", "Community-acquired pneumonia", None, False),
    ClassLabel("heart_failure", "Heart failure", None, False),
    ClassLabel("hypothyroidism", "Primary hypothyroidism", None, False),
    ClassLabel("hyperthyroidism", "Hyperthyroidism (Graves disease)", None, False),
    ClassLabel("copd", "Chronic obstructive pulmonary disease", None, False),
    ClassLabel("urinary_tract_infection", "Urinary tract infection", None, False),
    ClassLabel("nafld", "Non-alcoholic fatty liver disease", None, False),
    ClassLabel("vitamin_b12_deficiency", "Vitamin B12 deficiency anaemia", None, False),
    ClassLabel("gout", "Gout", None, False),
    ClassLabel("atrial_fibrillation", "Atrial fibrillation", None, False),
    ClassLabel("rheumatoid_arthritis", "Rheumatoid arthritis", None, False),
    ClassLabel("migraine", "Migraine", None, False),
    ClassLabel("marfan_syndrome", "Marfan syndrome", "OMIM:154700", True),
    ClassLabel("fabry_disease", "Fabry disease", "OMIM:301500", True),
    ClassLabel("wilson_disease", "Wilson disease", "OMIM:277900", True),
    ClassLabel("gaucher_disease_type1", "Gaucher disease type I", "OMIM:230800", True),
    ClassLabel("hereditary_haemochromatosis", "Hereditary haemochromatosis (HFE)", "OMIM:235200", True),
    ClassLabel("ehlers_danlos_classic", "Ehlers-Danlos syndrome, classic type", "OMIM:130000", True),
    ClassLabel("hht_type1", "Hereditary haemorrhagic telangiectasia type 1", "OMIM:187300", True),
    ClassLabel("alport_syndrome_x_linked", "Alport syndrome, X-linked", "OMIM:301050", True),
)
CLASS_BY_KEY = {c.key: c for c in CLASSES}

CDS_MULTIMODAL = ModelContract(
    "cds_multimodal",
    inputs=(
        TensorSpec("NOTE_EMBEDDING", "float32", (EMBEDDING_DIM,)),
        TensorSpec("LABS", "float32", (len(PANEL),)),  # services/cds/labs.py PANEL order, NaN: not ordered
    ),
    outputs=(
        TensorSpec("PROBS", "float32", (len(CLASSES),)),
        TensorSpec("LAB_ATTRIBUTIONS", "float32", (len(PANEL),)),  # toward each row's top class
        TensorSpec("NO_LABS_PROBABILITY", "float32", (1,)),
    ),
    max_batch_size=256,
)
