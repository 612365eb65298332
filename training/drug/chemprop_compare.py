"""chemprop 2.3.1 (a directed message-passing network, D-MPNN) beside the random forest of training/drug/activity.py,
on the same Bemis-Murcko scaffold split and random split of the ChEMBL series (issue 12).
Run as `python -m training.drug.chemprop_compare`.

chemprop needs numpy>=2 and lightning, which clash with this venv's numpy<2, so it runs as a command line from a venv
of its own (build/chemprop-venv, made by scripts/chemprop_env.sh, which this module runs when the venv is missing):
the splits are written as CSV files, `chemprop train` and `chemprop predict` run on CPU with fixed seeds, and the
predictions are read back and scored with activity.metrics, like the random forest trained in the same run.

The validation slice that picks chemprop's best epoch is carved from the training part, never from the test part:
whole scaffolds (the rarest of the training part) for the scaffold split, a random tenth for the random split. The
random forest, which selects nothing, trains on the whole training part. Nothing here is validated for any real target.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from training.drug.activity import (
    SERIES,
    Compound,
    load_series,
    metrics,
    morgan,
    random_forest,
    random_split,
    scaffold_split,
)

SPLITS = ("scaffold", "random")
VALIDATION_FRACTION = 0.1
ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "build" / "chemprop-venv"
ENV_SCRIPT = ROOT / "scripts" / "chemprop_env.sh"
WORKDIR = Path("build") / "drug" / "chemprop"
THREADS = 2
# Sized for the brief's budget (both splits within 4 min on 2 shared cores): chemprop's default 300-wide D-MPNN took
# 17 s an epoch there, 128 wide 8 s; small batches give more updates for the same compute.
EPOCHS = 12
ENSEMBLE = 1
HIDDEN = 128
BATCH_SIZE = 16


def split_indices(smiles: Sequence[str], split: str) -> tuple[list[int], list[int]]:
    """(train, test) indices exactly as training/drug/activity.py splits them."""
    if split == "scaffold":
        return scaffold_split(smiles)
    if split == "random":
        return random_split(len(smiles))
    raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")


def carve_validation(
    smiles: Sequence[str], train: Sequence[int], split: str, fraction: float = VALIDATION_FRACTION, seed: int = 0
) -> tuple[list[int], list[int]]:
    """(fit, validation) indices, both inside `train`: the split's own rule applied to the training part alone."""
    train = list(train)
    if split == "scaffold":
        fit, val = scaffold_split([smiles[i] for i in train], test_fraction=fraction)
    elif split == "random":
        fit, val = random_split(len(train), test_fraction=fraction, seed=seed)
    else:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
    return sorted(train[i] for i in fit), sorted(train[i] for i in val)


def write_split_csvs(
    compounds: Sequence[Compound], parts: Mapping[str, Sequence[int]], folder: Path
) -> dict[str, Path]:
    """One CSV per part (chembl_id, smiles, activity), plus `<part>_input.csv` without the activity for each part
    named "test": `chemprop predict` writes its predictions into the target's column of a copy of its input."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, indices in parts.items():
        with_target = [(name, True)] + ([(f"{name}_input", False)] if name == "test" else [])
        for file_name, target in with_target:
            path = folder / f"{file_name}.csv"
            with open(path, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["chembl_id", "smiles", "activity"] if target else ["chembl_id", "smiles"])
                for i in indices:
                    c = compounds[i]
                    writer.writerow([c.chembl_id, c.smiles, repr(c.activity)] if target else [c.chembl_id, c.smiles])
            paths[file_name] = path
    return paths


def read_predictions(path: Path, chembl_ids: Sequence[str]) -> np.ndarray:
    """The `activity` column of chemprop's prediction file, in the order of `chembl_ids` (checked, not assumed)."""
    with open(path, newline="") as fh:
        rows = {row["chembl_id"]: float(row["activity"]) for row in csv.DictReader(fh)}
    missing = [c for c in chembl_ids if c not in rows]
    if missing:
        raise ValueError(f"{path}: no prediction for {len(missing)} molecules, e.g. {missing[:3]}")
    return np.array([rows[c] for c in chembl_ids])


def train_command(
    folder: Path,
    epochs: int,
    ensemble: int,
    seed: int,
    hidden: int = HIDDEN,
    batch_size: int = BATCH_SIZE,
    venv: Path = VENV,
) -> list[str]:
    """`chemprop train` on train.csv, val.csv and test.csv of `folder` (test is only scored, never fitted on)."""
    return [
        str(venv / "bin" / "chemprop"),
        "train",
        "--data-path",
        *(str(folder / f"{part}.csv") for part in ("train", "val", "test")),
        "--smiles-columns",
        "smiles",
        "--target-columns",
        "activity",
        "--task-type",
        "regression",
        "--output-dir",
        str(folder / "model"),
        "--epochs",
        str(epochs),
        "--ensemble-size",
        str(ensemble),
        "--message-hidden-dim",
        str(hidden),
        "--ffn-hidden-dim",
        str(hidden),
        "--batch-size",
        str(batch_size),
        "--pytorch-seed",
        str(seed),
        "--data-seed",
        str(seed),
        "--accelerator",
        "cpu",
        "--devices",
        "1",
        "--num-workers",
        "0",
    ]


def predict_command(folder: Path, venv: Path = VENV) -> list[str]:
    """Every best.pt under the model folder: the ensemble's mean prediction."""
    return [
        str(venv / "bin" / "chemprop"),
        "predict",
        "--test-path",
        str(folder / "test_input.csv"),
        "--smiles-columns",
        "smiles",
        "--model-paths",
        str(folder / "model"),
        "--preds-path",
        str(folder / "test_predictions.csv"),
        "--accelerator",
        "cpu",
        "--devices",
        "1",
        "--num-workers",
        "0",
    ]


def run_logged(command: Sequence[str], log: Path) -> None:
    """Run a chemprop command with at most THREADS threads, its output to `log`; on failure, raise with its tail."""
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), CUDA_VISIBLE_DEVICES="")
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(command)}\n")
        fh.flush()
        done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise RuntimeError(f"{command[0]} {command[1]} exited {done.returncode} (log {log}):\n{tail}")


def ensure_venv(venv: Path = VENV) -> None:
    """Make build/chemprop-venv with scripts/chemprop_env.sh when it has no chemprop yet."""
    if not (venv / "bin" / "chemprop").exists():
        print(f"{venv} has no chemprop: running {ENV_SCRIPT}", flush=True)
        subprocess.run([str(ENV_SCRIPT)], check=True, env=dict(os.environ, CHEMPROP_VENV=str(venv)))


def evaluate(
    compounds: Sequence[Compound],
    epochs: int = EPOCHS,
    ensemble: int = ENSEMBLE,
    trees: int = 300,
    seed: int = 0,
    workdir: Path = WORKDIR,
    venv: Path = VENV,
    hidden: int = HIDDEN,
    batch_size: int = BATCH_SIZE,
) -> dict[str, dict[str, float]]:
    """chemprop and the random forest on each split: activity.metrics of each, plus chemprop's seconds."""
    smiles = [c.smiles for c in compounds]
    y = np.array([c.activity for c in compounds])
    x = morgan(smiles)
    out: dict[str, dict[str, float]] = {}
    for split in SPLITS:
        train, test = split_indices(smiles, split)
        fit, val = carve_validation(smiles, train, split, seed=seed)
        folder = workdir / split
        shutil.rmtree(folder, ignore_errors=True)
        write_split_csvs(compounds, {"train": fit, "val": val, "test": test}, folder)
        log = folder / "chemprop.log"
        started = time.perf_counter()
        run_logged(train_command(folder, epochs, ensemble, seed, hidden, batch_size, venv), log)
        trained = time.perf_counter()
        run_logged(predict_command(folder, venv), log)
        predicted = read_predictions(folder / "test_predictions.csv", [compounds[i].chembl_id for i in test])
        out[f"{split}/chemprop"] = metrics(y[test], predicted) | {
            "train_seconds": trained - started,
            "predict_seconds": time.perf_counter() - trained,
            "validation_molecules": float(len(val)),
        }
        model = random_forest(x[train], y[train], seed=seed, trees=trees)
        out[f"{split}/random-forest"] = metrics(y[test], model.predict(x[test]))  # type: ignore[attr-defined]
    return out


def verdict(chemprop: Mapping[str, float], forest: Mapping[str, float]) -> str:
    """Which metrics chemprop does not beat the random forest on, in words."""
    worse = [
        label
        for label, key, higher_better in (
            ("RMSE", "rmse", False),
            ("Spearman", "spearman", True),
            ("top-5 % enrichment", "top5_enrichment", True),
        )
        if (chemprop[key] <= forest[key] if higher_better else chemprop[key] >= forest[key])
    ]
    return f"not better than the random forest on {', '.join(worse)}" if worse else "better on every metric"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--ensemble", type=int, default=ENSEMBLE, help="chemprop models per split, averaged")
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="D-MPNN message and FFN width (chemprop: 300)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--venv", type=Path, default=VENV)
    parser.add_argument("--out", type=Path, default=Path("build") / "drug" / "chemprop_evaluation.json")
    args = parser.parse_args(argv)
    ensure_venv(args.venv)
    compounds = load_series()
    started = time.perf_counter()
    result = evaluate(
        compounds,
        args.epochs,
        args.ensemble,
        args.trees,
        args.seed,
        args.workdir,
        args.venv,
        args.hidden,
        args.batch_size,
    )
    total = time.perf_counter() - started
    print(
        f"{SERIES}: {len(compounds)} compounds; chemprop 2.3.1 D-MPNN ({args.hidden} wide) ensemble of "
        f"{args.ensemble}, {args.epochs} epochs, batch {args.batch_size}, CPU, vs RF on Morgan r=2 ({total:.0f} s)"
    )
    print("| split / model | RMSE | Spearman | top-5 % enrichment | test molecules | train s |")
    print("|---|---|---|---|---|---|")
    for name, m in result.items():
        seconds = f"{m['train_seconds']:.0f}" if "train_seconds" in m else "-"
        print(
            f"| {name} | {m['rmse']:.3f} | {m['spearman']:.3f} | {m['top5_enrichment']:.1f}x | "
            f"{int(m['test_molecules'])} | {seconds} |"
        )
    for split in SPLITS:
        print(f"- {split} split: chemprop is {verdict(result[f'{split}/chemprop'], result[f'{split}/random-forest'])}.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
