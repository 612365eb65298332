# medstream: `make demo` and `make test` are the two commands; everything else is a step of theirs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH):/usr/local/go/bin:$(HOME)/go/bin

.PHONY: setup demo test test-unit test-integration lint proto-lint chart-test stack-up stack-down stack-status models bench-spine bench-wearables bench-cds bench-imaging bench-dispatch bench-research bench-drug eval-research eval-drug eval-wearables eval-cds eval-imaging kg-load clean

setup:  ## install what is missing (idempotent)
	@scripts/bootstrap.sh

demo: setup  ## local stack up, spine on the bundled sample data
	@medstream demo

# Models whose weights are missing are trained first (minutes), outside the suite's per-test timeout.
test: setup models  ## the whole suite against the real local stack
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q -m unit

test-integration: setup models
	$(PY) -m pytest -q -m integration

lint: setup  ## ruff (lint + format), mypy, and the import contracts (serving never imports training/benchmarks)
	$(VENV)/bin/ruff check services training tests model_repository
	$(VENV)/bin/ruff format --check services training tests model_repository
	$(VENV)/bin/mypy services training
	$(VENV)/bin/lint-imports --no-cache

chart-test: setup  ## helm lint/template, offline schema validation, chart<->code drift, Dockerfile rules
	$(PY) -m pytest -q tests/charts

proto-lint: setup
	buf lint protos

stack-up: setup
	@medstream stack up

stack-down:
	@medstream stack down

stack-status:
	@medstream stack status

models: setup  ## train models whose weights are missing
	@medstream models train

bench-spine: setup
	$(PY) -m benchmarks.spine

bench-wearables: setup  ## ingestion HTTP vs gRPC, worker vs bare consumer, accepted-to-alert latency
	$(PY) -m benchmarks.wearables

bench-cds: setup  ## FHIR accepted -> suggestion p50/p99, CDS Hooks p50/p99, cases/s batched vs one by one
	$(PY) -m benchmarks.cds

eval-cds: setup  ## train/evaluate the decision-support model: plain vs SMOTE vs focal loss, fp32 vs int8
	$(PY) -m training.cds.training

kg-load: setup  ## load HPO, ICD-10-CM and drug names into the local Neo4j
	@medstream kg load

eval-imaging: setup  ## train/evaluate the imaging models on held-out synthetic cases (sensitivity, FP/scan, size error)
	$(PY) -m training.imaging.lung
	$(PY) -m training.imaging.change_eval
	$(PY) -m training.imaging.stroke

bench-imaging: setup  ## C-STORE vs dcmtk storescp, series-complete -> finding p50/p99, Triton with/without batching
	$(PY) -m benchmarks.imaging

bench-dispatch: setup  ## imaging dispatcher: report -> SEG/SR in a PACS p50/p99, burst objects/s vs dcmtk storescu
	$(PY) -m benchmarks.dispatch

bench-research: setup models  ## Synthea replay (gateway vs plain aiohttp), event -> trial matches, drug start -> ADR p50/p99, re-match 10k
	$(PY) -m benchmarks.research

bench-drug: setup models  ## screening mol/s per worker vs RDKit+RF floor, Triton with/without batching, generation mol/s, loader RSS over 1.58 M
	$(PY) -m benchmarks.drug

eval-research: setup  ## trial matching vs keyword search on a Synthea population; ADR model vs rules per reaction
	$(PY) -m training.research.trials_eval --patients 150 --seed 2025  # seed 42 was the development population
	$(PY) -m training.research.adr

eval-drug: setup  ## activity GNN vs RF vs chemprop (scaffold and random split), the ADMET surrogate, generation (MOSES metrics)
	$(PY) -m training.drug.gnn
	$(PY) -m training.drug.chemprop_compare
	$(PY) -m training.drug.admet
	$(PY) -m training.drug.generator

eval-wearables: setup  ## train/evaluate the CGM model: simglucose held-out patients and iglu real traces
	$(PY) -m training.glycaemia.training

clean:
	rm -rf gen build devstack/neo4j/target
