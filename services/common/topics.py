"""The one topic catalog: every Kafka topic, its key, value type and retention.

Topic creation (`medstream topics create`) and docs/TOPICS.md are both generated from this list.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    key: str
    value_type: str  # fully qualified protobuf message name, or "JSON: <standard>"
    description: str
    partitions: int | None = None  # None: the deployment's default (MEDSTREAM_KAFKA_TOPIC_PARTITIONS)
    retention_ms: int = 7 * DAY_MS
    compacted: bool = False

    def config(self) -> dict[str, str]:
        """Topic-level Kafka configuration; compacted topics also expire keys after the retention."""
        return {
            "cleanup.policy": "compact,delete" if self.compacted else "delete",
            "retention.ms": str(self.retention_ms),
        }


DICOM_INSTANCES = TopicSpec(
    "medstream.dicom.instances.v1",
    key="series_instance_uid",
    value_type="medstream.events.v1.DicomInstanceArrival",
    description="Claim checks for stored DICOM instances (blob URI + key attributes, never pixel data).",
)
DICOM_SERIES = TopicSpec(
    "medstream.dicom.series.v1",
    key="series_instance_uid",
    value_type="medstream.events.v1.DicomSeriesComplete",
    description="Completed series (one record per revision) with their instances' blob references, routed.",
)
FHIR_EVENTS = TopicSpec(
    "medstream.fhir.events.v1",
    key="patient_reference",
    value_type="medstream.events.v1.FhirResourceEvent",
    description="Validated FHIR R4 resources, one per record, in order per patient.",
)
WEARABLE_SAMPLES = TopicSpec(
    "medstream.wearables.samples.v1",
    key="patient_id",
    value_type="medstream.events.v1.WearableSampleBatch",
    description="Normalised wearable measurements (LOINC/UCUM) as acknowledged vendor batches.",
)
WEARABLE_RECEIPTS = TopicSpec(
    "medstream.wearables.receipts.v1",
    key="vendor_id|idempotency_key",
    value_type="medstream.events.v1.IngestReceipt",
    description="The gateway's answer per vendor batch, so a retried batch is not published twice.",
    compacted=True,
)
FHIR_RECEIPTS = TopicSpec(
    "medstream.fhir.receipts.v1",
    key="request digest",
    value_type="medstream.events.v1.FhirRequestReceipt",
    description="The FHIR gateway's record of each accepted request, in the transaction of its resources: a retry "
    "is answered again, not republished.",
    retention_ms=2 * DAY_MS,
    compacted=True,
)
TRIAL_PROTOCOLS = TopicSpec(
    "medstream.trials.protocols.v1",
    key="trial_id",
    value_type="medstream.events.v1.TrialProtocol",
    description="Trial protocols, new or amended; each is written to every partition so every matcher instance sees "
    "it beside its own patients (`medstream trials publish`).",
    retention_ms=365 * DAY_MS,
    compacted=True,
)
TRIAL_MATCHES = TopicSpec(
    "medstream.trials.matches.v1",
    key="patient_id",
    value_type="JSON: medstream.trials.match.v1 (per-criterion verdicts with evidence, score, unmet, unknown)",
    description="Patient-trial eligibility, published when a patient's verdicts for a trial change.",
    retention_ms=30 * DAY_MS,
)
DRUG_LIBRARY = TopicSpec(
    "medstream.drug.library.v1",
    key="molecule_id",
    value_type="medstream.events.v1.LibraryMolecule",
    description="Screening-library molecules, one record each (`medstream drug load`, the molecule generator, "
    "a chemist's tools): the virtual-screening funnel's input.",
    retention_ms=7 * DAY_MS,
)
DRUG_HITS = TopicSpec(
    "medstream.drug.hits.v1",
    key="inchikey",
    value_type="medstream.events.v1.ScreeningHit",
    description="Molecules the screening funnel kept, with predicted activity, its uncertainty, alerts and ADMET "
    "flags; compacted on the InChIKey.",
    retention_ms=90 * DAY_MS,
    compacted=True,
)
DRUG_SCREENING_OUTCOMES = TopicSpec(
    "medstream.drug.screening.outcomes.v1",
    key="molecule_id",
    value_type="medstream.events.v1.ScreeningOutcome",
    description="The screening funnel's decision for every library record (stage, reason, score when scored): a "
    "library is accounted for when its outcomes number its records.",
    retention_ms=7 * DAY_MS,
)
DRUG_GENERATION_REQUESTS = TopicSpec(
    "medstream.drug.generation.requests.v1",
    key="request_id",
    value_type="medstream.events.v1.GenerationRequest",
    description="Requests for new molecules (N, optionally guided toward a target); answered on the library topic.",
    retention_ms=7 * DAY_MS,
)
VITALS_SNAPSHOTS = TopicSpec(
    "medstream.vitals.snapshots.v1",
    key="patient_id",
    value_type="medstream.events.v1.VitalSignsSnapshot",
    description="Bedside vital-sign sets charted together (input of the deterioration-risk service).",
)
FINDINGS = TopicSpec(
    "medstream.findings.v1",
    key="patient_id",
    value_type="medstream.events.v1.Finding",
    description="Model and rule conclusions about a patient, with model name and version.",
    retention_ms=30 * DAY_MS,
)
ALERTS = TopicSpec(
    "medstream.alerts.v1",
    key="patient_id",
    value_type="medstream.events.v1.Alert",
    description="Actionable alerts for downstream apps to subscribe to.",
    retention_ms=30 * DAY_MS,
)
FHIR_WRITEBACK = TopicSpec(
    "medstream.fhir.writeback.v1",
    key="patient_reference",
    value_type="medstream.events.v1.FhirResourceEvent",
    description="FHIR R4 resources medstream derived (e.g. hourly wearable Observations) for EHR write-back.",
    retention_ms=30 * DAY_MS,
)
CDS_SUGGESTIONS = TopicSpec(
    "medstream.cds.suggestions.v1",
    key="patient_reference",
    value_type="JSON: CDS Hooks 2.0 response (cards) + suggestionId, patient, model",
    description="Differential-diagnosis suggestions as CDS Hooks cards, each with its explanation and model version.",
    retention_ms=30 * DAY_MS,
)
GRAPH_MUTATIONS = TopicSpec(
    "medstream.graph.mutations.v1",
    key="patient_id",
    value_type="medstream.events.v1.GraphMutation",
    description="Idempotent node/relationship upserts applied to Neo4j by the graph-writer service.",
)
DEAD_LETTERS = TopicSpec(
    "medstream.deadletter.v1",
    key="original key",
    value_type="medstream.events.v1.DeadLetter",
    description="Records a consumer could not process: original bytes, source coordinates, reason.",
    partitions=1,
    retention_ms=30 * DAY_MS,
)

CATALOG: tuple[TopicSpec, ...] = (
    DICOM_INSTANCES,
    DICOM_SERIES,
    FHIR_EVENTS,
    WEARABLE_SAMPLES,
    WEARABLE_RECEIPTS,
    FHIR_RECEIPTS,
    TRIAL_PROTOCOLS,
    TRIAL_MATCHES,
    DRUG_LIBRARY,
    DRUG_HITS,
    DRUG_SCREENING_OUTCOMES,
    DRUG_GENERATION_REQUESTS,
    VITALS_SNAPSHOTS,
    FINDINGS,
    ALERTS,
    FHIR_WRITEBACK,
    CDS_SUGGESTIONS,
    GRAPH_MUTATIONS,
    DEAD_LETTERS,
)


def by_name(name: str) -> TopicSpec:
    for spec in CATALOG:
        if spec.name == name:
            return spec
    raise KeyError(name)


def markdown_table() -> str:
    """The catalog as the Markdown table in docs/TOPICS.md."""
    rows = [
        "| topic | key | value | partitions | retention | description |",
        "|---|---|---|---|---|---|",
    ]
    for t in CATALOG:
        parts = str(t.partitions) if t.partitions else "default"
        keep = f"{t.retention_ms // DAY_MS} d" + (", compacted" if t.compacted else "")
        rows.append(f"| `{t.name}` | {t.key} | `{t.value_type}` | {parts} | {keep} | {t.description} |")
    return "\n".join(rows) + "\n"
