"""Train the multimodal differential-diagnosis model: note embedding + lab panel in, 24 diagnoses out.

Compares three answers to class imbalance (plain cross-entropy, SMOTE on the fused features, focal loss),
ships the one with the best validation macro-F1 as TorchScript, and measures int8 dynamic quantisation and
explanation cost. Synthetic data only. Run as `python -m training.cds.training`.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.cds.contract import CDS_MULTIMODAL, CLASSES
from services.cds.labs import PANEL
from services.common.sentences import MODEL_ID, embed
from training.cds.cohort import DEFAULT_CACHE, Cohort, CohortSpec, generate
from training.cds.diseases import DISEASES, RARE_KEYS
from training.cds.explain import explain
from training.cds.network import CdsMultimodal, fit_head, lab_statistics, predict_proba

__all__ = ["MODEL_NAME", "Evaluation", "main", "train"]

MODEL_NAME = CDS_MULTIMODAL.name
REPOSITORY_MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repository" / MODEL_NAME
VARIANTS = ("plain", "smote", "focal")
ABLATIONS = ("note_only", "labs_only")  # plain cross-entropy with the other modality blanked
TEST_FRACTION, VALIDATION_FRACTION = 0.25, 0.15
Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass
class VariantResult:
    name: str
    validation_macro_f1: float
    accuracy: float
    macro_f1: float
    rare_f1: float  # mean F1 over the rare genetic diseases
    top3_accuracy: float


@dataclass
class RareClass:
    label: str
    train: int
    test: int
    f1: float


@dataclass
class Quantisation:
    accuracy_fp32: float
    accuracy_int8: float
    macro_f1_fp32: float
    macro_f1_int8: float
    top1_agreement: float
    latency_ms_batch1_fp32: float  # median, TorchScript, one CPU thread
    latency_ms_batch1_int8: float
    latency_ms_batch32_fp32: float
    latency_ms_batch32_int8: float


@dataclass
class Evaluation:
    patients: int
    train: int
    validation: int
    test: int
    classes: list[str]
    rare_classes: list[str]
    embedding_model: str
    variants: list[VariantResult]
    ablations: list[VariantResult]
    chosen: str
    rare_f1_ci95: list[float]  # chosen model, bootstrap over test patients
    rare_recall_name_in_note: float  # rare test patients whose note names their disease (family history)
    rare_recall_name_not_in_note: float  # ... and those whose note does not
    rare_per_class: list[RareClass]
    quantisation: Quantisation
    explain_ms_labs: float  # median explain() latency, labs only
    explain_ms_with_note: float  # with leave-one-sentence-out re-embedding
    seconds: dict[str, float]


# ---- metrics (pure) ----


def f1_per_class(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    tp = np.bincount(y[pred == y], minlength=n_classes).astype(float)
    predicted, actual = np.bincount(pred, minlength=n_classes), np.bincount(y, minlength=n_classes)
    denom = predicted + actual
    return np.divide(2 * tp, denom, out=np.zeros(n_classes), where=denom > 0)


def top_k_accuracy(y: np.ndarray, probs: np.ndarray, k: int = 3) -> float:
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def scores(y: np.ndarray, probs: np.ndarray, rare: np.ndarray) -> tuple[float, float, float, float]:
    """(accuracy, macro-F1 over classes present in y, mean F1 of the rare classes, top-3 accuracy)."""
    pred = probs.argmax(axis=1)
    f1 = f1_per_class(y, pred, probs.shape[1])
    present = np.bincount(y, minlength=probs.shape[1]) > 0
    rare_f1 = float(f1[rare & present].mean()) if (rare & present).any() else float("nan")
    return float((pred == y).mean()), float(f1[present].mean()), rare_f1, top_k_accuracy(y, probs)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices; each class gives round(fraction * its count) to the held-out part."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_held = round(fraction * len(idx))
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


# ---- pieces of the run ----


def embeddings_for(cohort: Cohort, cache_dir: Path, embed_fn: Embed) -> np.ndarray:
    """Note embeddings, cached next to the cohort (the sentence model is the slow part)."""
    path = cache_dir / f"embeddings-{cohort.key}.npy"
    if embed_fn is embed and path.exists():
        return np.load(path)
    vectors = embed_fn(cohort.notes)
    if embed_fn is embed:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(path)
    return vectors


def oversample(features: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE every class up to the largest; classes too small for neighbours are duplicated instead."""
    from imblearn.over_sampling import SMOTE, RandomOverSampler

    smallest = int(np.bincount(y)[np.unique(y)].min())
    sampler = (
        SMOTE(k_neighbors=min(5, smallest - 1), random_state=seed)
        if smallest >= 3
        else RandomOverSampler(random_state=seed)
    )
    x_res, y_res = sampler.fit_resample(features, y)
    return np.asarray(x_res, dtype=np.float32), np.asarray(y_res, dtype=np.int64)


def median_ms(fn: Callable[[], object], repeats: int = 200) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def quantisation(model: CdsMultimodal, emb: np.ndarray, labs: np.ndarray, y: np.ndarray) -> Quantisation:
    """int8 dynamic quantisation of the Linear layers: test accuracy and single-thread CPU latency, both scripted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        int8 = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        fp32_s, int8_s = torch.jit.script(model.eval()), torch.jit.script(int8.eval())
    p32, p8 = predict_proba(fp32_s, emb, labs), predict_proba(int8_s, emb, labs)
    a32, f32, _, _ = scores(y, p32, np.zeros(p32.shape[1], dtype=bool))
    a8, f8, _, _ = scores(y, p8, np.zeros(p8.shape[1], dtype=bool))
    latency = {}
    for name, scripted in (("fp32", fp32_s), ("int8", int8_s)):
        for batch in (1, 32):
            e, lab = torch.from_numpy(emb[:batch]), torch.from_numpy(labs[:batch])

            def run(m: nn.Module = scripted, e: torch.Tensor = e, lab: torch.Tensor = lab) -> object:
                with torch.no_grad():
                    return m(e, lab)

            latency[(name, batch)] = median_ms(run)
    return Quantisation(
        a32,
        a8,
        f32,
        f8,
        float((p32.argmax(1) == p8.argmax(1)).mean()),
        latency[("fp32", 1)],
        latency[("int8", 1)],
        latency[("fp32", 32)],
        latency[("int8", 32)],
    )


def train(
    out_dir: Path,
    *,
    n_patients: int = 5000,
    seed: int = 11,
    epochs: int = 40,
    cache_dir: Path = DEFAULT_CACHE,
    embed_fn: Embed = embed,
    measure: bool = True,
) -> Evaluation:
    """Generate (or read cached) cohort and embeddings, train the variants, write `1/model.pt`, labels, evaluation."""
    clock: dict[str, float] = {}
    start = time.perf_counter()
    cohort = generate(CohortSpec(n_patients, seed), cache_dir)
    clock["cohort"] = time.perf_counter() - start
    start = time.perf_counter()
    embeddings = embeddings_for(cohort, cache_dir, embed_fn)
    clock["embedding"] = time.perf_counter() - start
    start = time.perf_counter()
    torch.set_num_threads(1)  # determinism, and the figures match Triton's one-thread instances
    torch.manual_seed(seed)
    y, labs = cohort.y, cohort.labs
    n_classes = len(cohort.labels)
    rare = np.array([label in RARE_KEYS for label in cohort.labels])
    dev, test = stratified_split(y, TEST_FRACTION, seed)
    train_idx, val_sub = stratified_split(y[dev], VALIDATION_FRACTION, seed + 1)
    train_idx, val = dev[train_idx], dev[val_sub]

    log_mask = [lab.log for lab in PANEL]
    mean, std = lab_statistics(labs[train_idx], log_mask)
    n_emb = embeddings.shape[1]

    def fresh() -> CdsMultimodal:
        torch.manual_seed(seed)
        return CdsMultimodal(mean, std, log_mask, n_classes)

    def fused(model: CdsMultimodal, idx: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.fuse(torch.from_numpy(embeddings[idx]), torch.from_numpy(labs[idx])).numpy()

    def result(name: str, model: CdsMultimodal, blank: slice | None = None) -> VariantResult:
        def probs(idx: np.ndarray) -> np.ndarray:
            x = fused(model, idx)
            if blank is not None:
                x[:, blank] = 0.0
            with torch.no_grad():
                return torch.softmax(model.head(torch.from_numpy(x)), dim=1).numpy()

        _, val_f1, _, _ = scores(y[val], probs(val), rare)
        return VariantResult(name, val_f1, *scores(y[test], probs(test), rare))

    models: dict[str, CdsMultimodal] = {}
    variants: list[VariantResult] = []
    for name in VARIANTS:
        model = fresh()
        x, t = fused(model, train_idx), y[train_idx]
        if name == "smote":
            x, t = oversample(x, t, seed)
        models[name] = fit_head(model, x, t, loss="focal" if name == "focal" else "ce", epochs=epochs, seed=seed)
        variants.append(result(name, models[name]))
    ablations = []
    for name, blank in (("note_only", slice(n_emb, None)), ("labs_only", slice(0, n_emb))):
        model = fresh()
        x = fused(model, train_idx)
        x[:, blank] = 0.0
        ablations.append(result(name, fit_head(model, x, y[train_idx], epochs=epochs, seed=seed), blank))
    chosen = max(variants, key=lambda v: v.validation_macro_f1).name  # first wins ties: plain before the others
    model = models[chosen].eval()
    clock["training"] = time.perf_counter() - start

    probs = predict_proba(model, embeddings[test], labs[test])
    boot_rng = np.random.default_rng(seed)
    boot = []
    for _ in range(200):
        idx = boot_rng.integers(0, len(test), len(test))
        boot.append(scores(y[test][idx], probs[idx], rare)[2])
    pred = probs.argmax(1)
    f1 = f1_per_class(y[test], pred, n_classes)
    rare_per_class = [
        RareClass(cohort.labels[c], int((y[train_idx] == c).sum()), int((y[test] == c).sum()), float(f1[c]))
        for c in np.flatnonzero(rare)
    ]

    names = {d.key: d.name.lower() for d in DISEASES}
    rare_test = [int(i) for i in test if rare[y[i]]]
    named = np.array([names[cohort.labels[y[i]]] in cohort.notes[i].lower() for i in rare_test], dtype=bool)
    hit = np.array([pred[list(test).index(i)] == y[i] for i in rare_test], dtype=bool)

    def recall(mask: np.ndarray) -> float:
        return float(hit[mask].mean()) if mask.any() else float("nan")

    quant = Quantisation(*([float("nan")] * 9))
    explain_labs = explain_note = float("nan")
    if measure:
        start = time.perf_counter()
        quant = quantisation(model, embeddings[test], labs[test], y[test])
        scripted = torch.jit.script(model)
        one = int(test[0])
        explain_labs = median_ms(lambda: explain(scripted, embeddings[one], labs[one], cohort.labels), 30)
        explain_note = median_ms(
            lambda: explain(
                scripted, embeddings[one], labs[one], cohort.labels, note=cohort.notes[one], embed=embed_fn
            ),
            10,
        )
        clock["measurements"] = time.perf_counter() - start

    if list(cohort.labels) != [c.key for c in CLASSES]:
        raise ValueError("the cohort's classes differ from the contract's (services/cds/contract.py CLASSES)")
    inputs = {"NOTE_EMBEDDING": embeddings[:4].astype(np.float32), "LABS": labs[:4].astype(np.float32)}
    CDS_MULTIMODAL.check_inputs(inputs)
    with torch.no_grad():
        probs = model(*(torch.from_numpy(a) for a in inputs.values())).numpy()
    CDS_MULTIMODAL.check_outputs({"PROBS": probs})
    version_dir = out_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    labels_json = json.dumps(list(cohort.labels))
    # Labels travel inside model.pt too, so weights and class order can never be mismatched.
    torch.jit.save(torch.jit.script(model), str(version_dir / "model.pt"), _extra_files={"labels.json": labels_json})
    (version_dir / "labels.json").write_text(labels_json + "\n")
    evaluation = Evaluation(
        patients=len(y),
        train=len(train_idx),
        validation=len(val),
        test=len(test),
        classes=list(cohort.labels),
        rare_classes=list(RARE_KEYS),
        embedding_model=MODEL_ID,
        variants=variants,
        ablations=ablations,
        chosen=chosen,
        rare_f1_ci95=[float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        rare_recall_name_in_note=recall(named),
        rare_recall_name_not_in_note=recall(~named),
        rare_per_class=rare_per_class,
        quantisation=quant,
        explain_ms_labs=explain_labs,
        explain_ms_with_note=explain_note,
        seconds={k: round(v, 1) for k, v in clock.items()},
    )
    (out_dir / "evaluation.json").write_text(json.dumps(asdict(evaluation), indent=2) + "\n")
    return evaluation


def table(evaluation: Evaluation) -> str:
    """The comparison as Markdown: imbalance strategies, modality ablations, int8 against fp32."""
    lines = [
        "| model (test set) | val macro-F1 | accuracy | macro-F1 | rare-class F1 | top-3 accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for v in evaluation.variants + evaluation.ablations:
        mark = " (chosen)" if v.name == evaluation.chosen else ""
        lines.append(
            f"| {v.name}{mark} | {v.validation_macro_f1:.3f} | {v.accuracy:.3f} | {v.macro_f1:.3f} | "
            f"{v.rare_f1:.3f} | {v.top3_accuracy:.3f} |"
        )
    low, high = evaluation.rare_f1_ci95
    lines.append(
        f"\nchosen = {evaluation.chosen}: rare-class F1 95% bootstrap interval {low:.3f} to {high:.3f}; "
        f"rare recall {evaluation.rare_recall_name_in_note:.3f} when the note names the disease (family "
        f"history), {evaluation.rare_recall_name_not_in_note:.3f} when it does not"
    )
    lines += ["", "| rare disease | train | test | F1 |", "|---|---|---|---|"]
    lines += [f"| {r.label} | {r.train} | {r.test} | {r.f1:.3f} |" for r in evaluation.rare_per_class]
    q = evaluation.quantisation
    lines += [
        "",
        "| int8 dynamic vs fp32 (chosen model) | fp32 | int8 |",
        "|---|---|---|",
        f"| test accuracy | {q.accuracy_fp32:.3f} | {q.accuracy_int8:.3f} |",
        f"| test macro-F1 | {q.macro_f1_fp32:.3f} | {q.macro_f1_int8:.3f} |",
        f"| latency batch 1, median ms (1 thread) | {q.latency_ms_batch1_fp32:.3f} | {q.latency_ms_batch1_int8:.3f} |",
        f"| latency batch 32, median ms (1 thread) | {q.latency_ms_batch32_fp32:.3f} | "
        f"{q.latency_ms_batch32_int8:.3f} |",
        f"\ntop-1 agreement int8 vs fp32: {q.top1_agreement:.3f}; explain(): {evaluation.explain_ms_labs:.1f} ms "
        f"labs only, {evaluation.explain_ms_with_note:.1f} ms with sentence occlusion",
        f"{evaluation.patients} patients ({evaluation.train} train / {evaluation.validation} validation / "
        f"{evaluation.test} test), {len(evaluation.classes)} diagnoses ({len(evaluation.rare_classes)} rare); "
        f"seconds: {evaluation.seconds}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPOSITORY_MODEL_DIR, help="model folder to write")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cohort and embedding cache")
    args = parser.parse_args()
    print(table(train(args.out, cache_dir=args.cache)))


if __name__ == "__main__":
    main()
