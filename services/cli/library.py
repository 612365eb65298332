"""`medstream library`: stream a compound library onto the screening topic, one record per molecule, read lazily
from the files that ship inside installed wheels (nothing is downloaded) or from a chemist's SMILES/SDF file.

Bundled libraries:
- moses-train, moses-test, moses-scaffolds: MOSES (molsets 0.3.1, 1.58 M / 176 k / 176 k SMILES), read through
  importlib.util.find_spec("moses") without importing the package (its dependencies do not install here).
- nci-5k: the first 5,000 NCI open compounds in the rdkit wheel (rdkit/Data/NCI/first_5K.smi).
- drugbank-approved: 2,845 approved drugs in admet-ai 2.0.1's data (admet_ai/resources/data/drugbank_approved.csv).
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer
from medstream.events.v1 import common_pb2, drug_pb2

from services.common.config import Settings
from services.common.topic_reader import read_messages
from services.common.topics import DRUG_HITS, DRUG_LIBRARY

PRODUCER = "medstream-library"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec and spec.origin else None


def _moses(split: str) -> Iterator[tuple[str, str]]:
    root = _package_dir("moses")
    if root is None:
        raise FileNotFoundError("MOSES data needs molsets==0.3.1 (scripts/bootstrap.sh installs it, --no-deps)")
    with gzip.open(root / "dataset" / "data" / f"{split}.csv.gz", "rt", newline="") as f:
        rows = csv.reader(f)
        next(rows)  # SMILES,SPLIT
        for i, row in enumerate(rows):
            yield str(i), row[0]


def _nci() -> Iterator[tuple[str, str]]:
    root = _package_dir("rdkit")
    assert root is not None  # rdkit is a dependency of every drug service
    with open(root / "Data" / "NCI" / "first_5K.smi") as f:
        for line in f:
            smiles, _, number = line.strip().partition("\t")
            if smiles:
                yield f"NSC-{number.strip()}", smiles


def _approved() -> Iterator[tuple[str, str]]:
    root = _package_dir("admet_ai")
    if root is None:
        raise FileNotFoundError("the approved-drug set needs admet-ai==2.0.1 (the adr-data extra)")
    with open(root / "resources" / "data" / "drugbank_approved.csv", newline="") as f:
        for row in csv.DictReader(f):
            yield row["id"], row["smiles"]


BUNDLED = {
    "moses-train": lambda: _moses("train"),
    "moses-test": lambda: _moses("test"),
    "moses-scaffolds": lambda: _moses("test_scaffolds"),
    "nci-5k": _nci,
    "drugbank-approved": _approved,
}


def read_file(path: Path) -> Iterator[tuple[str, str, bool]]:
    """(id, structure, is_molblock) from a SMILES file (SMILES then an optional id, per line; .csv with a SMILES
    column) or an SDF (each record's MOL block; its first line names it). Nothing is parsed here: an invalid
    structure is the screening service's to refuse, with RDKit's reason."""
    opener = gzip.open if path.suffix == ".gz" else open
    kind = path.name.removesuffix(".gz").rsplit(".", 1)[-1].lower()
    with opener(path, "rt", newline="") as f:  # type: ignore[operator]
        if kind == "sdf":
            block: list[str] = []
            n = 0
            for line in f:
                if line.startswith("$$$$"):
                    text = "".join(block)
                    cut = text.find("M  END")
                    yield (text.splitlines()[0].strip() or str(n)), text[: cut + 6] if cut >= 0 else text, True
                    block, n = [], n + 1
                else:
                    block.append(line)
        elif kind == "csv":
            for i, row in enumerate(csv.DictReader(f)):
                smiles = row.get("SMILES") or row.get("smiles") or ""
                yield (row.get("id") or row.get("ID") or str(i)), smiles, False
        else:
            for i, line in enumerate(f):
                parts = line.split()
                if parts:
                    yield (parts[1] if len(parts) > 1 else str(i)), parts[0], False


def records(library: str, rows: Iterable[tuple[str, str, bool]]) -> Iterator[drug_pb2.LibraryMolecule]:
    for molecule_id, structure, is_block in rows:
        yield drug_pb2.LibraryMolecule(
            molecule_id=f"{library}:{molecule_id}",
            library=library,
            smiles="" if is_block else structure,
            molblock=structure if is_block else "",
            provenance=common_pb2.Provenance(producer=PRODUCER),
        )


def library_records(source: str, limit: int | None = None) -> Iterator[drug_pb2.LibraryMolecule]:
    """A bundled library by name, or a file path; at most `limit` molecules."""
    if source in BUNDLED:
        rows: Iterable[tuple[str, str, bool]] = ((i, s, False) for i, s in BUNDLED[source]())
        name = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{source!r} is neither a bundled library ({', '.join(BUNDLED)}) nor a file")
        rows, name = read_file(path), path.name.split(".")[0]
    return records(name, itertools.islice(rows, limit))


@dataclass(frozen=True, slots=True)
class Loaded:
    molecules: int
    seconds: float


def publish(
    settings: Settings,
    molecules: Iterable[drug_pb2.LibraryMolecule],
    topic: str = DRUG_LIBRARY.name,
    flush_every: int = 50_000,
) -> Loaded:
    """Produce each molecule keyed by its id (idempotent producer, acks=all, batched and compressed); waits until
    every record is acknowledged. Memory stays bounded: the producer's queue is flushed as it fills."""
    producer = Producer(
        {
            **settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 50,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 200_000,
        }
    )
    started, n = time.perf_counter(), 0
    failed: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    for message in molecules:
        value = message.SerializeToString()
        while True:
            try:
                producer.produce(topic, value, key=message.molecule_id.encode(), on_delivery=delivered)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
        n += 1
        if n % flush_every == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("Kafka did not acknowledge every molecule within 120 s")
    if failed:
        raise RuntimeError(f"{len(failed)} molecules were not delivered, first: {failed[0]}")
    return Loaded(n, time.perf_counter() - started)


def ranked_hits(
    settings: Settings, since: dict[int, int] | None = None, library: str | None = None
) -> list[drug_pb2.ScreeningHit]:
    """The hits topic's latest record per InChIKey (the topic is compacted on it), best rank score first."""
    latest: dict[str, drug_pb2.ScreeningHit] = {}
    for h in read_messages(settings, DRUG_HITS.name, drug_pb2.ScreeningHit, since):
        if library is None or h.library == library:
            latest[h.inchikey] = h
    return sorted(latest.values(), key=lambda h: h.rank_score, reverse=True)


def describe(h: drug_pb2.ScreeningHit) -> str:
    admet = ", ".join(f"{k} {v:.2f}" for k, v in sorted(h.admet.items()))
    alerts = "; ".join(h.alerts) or "none"
    return (
        f"{h.activity:.2f} ± {h.uncertainty:.2f} ({h.model.name}:{h.model.version}) {h.smiles} [{h.molecule_id}] "
        f"alerts: {alerts}; ADMET: {admet}"
    )
