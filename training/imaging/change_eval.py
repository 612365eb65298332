"""How well the change against a prior study works, measured on synthetic patients with known truth.

For each held-out patient (`lung.CHANGE_SEEDS`) the baseline chest CT and its follow-up (`FOLLOWUP_DAYS` later,
moved by a known rigid transform, nodules grown by known factors) are written as DICOM, read back and segmented
the way the service does (`lung.prepare`, lung patches, probabilities, `labelled_candidates` at the lung-nodule
route's threshold and minimum volume); `priors.measure_change` then compares the follow-up's candidates with the
baseline's. The same runs with candidates taken from the ground-truth masks on the model grid: an upper bound that
shows what registration and matching alone achieve (their volumes still carry the 2.5 mm grid's error).

`python -m training.imaging.change_eval` evaluates the exported model (`model_repository/lung_nodule/1/model.pt`,
not retrained) and stores the figures in `evaluation.json` under "change"; `make eval-imaging` retrains and does
the same through `lung.run`.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from services.imaging.postprocess import Candidate, Change, labelled_candidates
from services.imaging.preprocess import Volume, register_rigid
from services.imaging.priors import PriorFinding, PriorStudy, measure_change
from training.imaging import lung
from training.imaging.synthetic_ct import Nodule as TrueNodule
from training.imaging.synthetic_ct import SyntheticCT, generate_ct, generate_followup
from training.imaging.training import Lesion, Sample, match

NODULES_PER_PATIENT = 3


# ---------------------------------------------------------------------------------------------------------
# Scoring (pure): one patient's comparison against the phantom truth, then the figures over all patients.


@dataclass(frozen=True)
class Outcome:
    """One true nodule followed from the baseline to the follow-up."""

    growth_factor: float  # true follow-up volume / baseline volume
    days: float
    detected_in_both: bool
    matched_to_itself: bool  # its follow-up candidate was paired with its own baseline candidate
    volume_change_pct: float | None  # measured, when matched to itself
    doubling_time_days: float | None  # measured, when matched to itself and measured as grown
    registration_error_mm: float  # follow-up truth centre mapped into the baseline frame vs the baseline truth centre
    unregistered_distance_mm: float  # the same without registration (how far the patient moved the nodule)

    @property
    def true_change_pct(self) -> float:
        return 100.0 * (self.growth_factor - 1.0)

    @property
    def true_doubling_time_days(self) -> float | None:
        return self.days * math.log(2) / math.log(self.growth_factor) if self.growth_factor > 1.0 else None


@dataclass(frozen=True)
class PatientScore:
    outcomes: list[Outcome]
    matches: int  # follow-up candidates paired with a baseline candidate
    false_matches: int  # pairs that are not one true nodule with itself
    false_matches_between_false_positives: int  # of those: a false positive paired with a false positive


def score_patient(
    before: Sequence[TrueNodule],
    after: Sequence[TrueNodule],
    hits_before: Mapping[int, int],
    hits_after: Mapping[int, int],
    changes: Sequence[Change],
    prior_index: Sequence[int | None],
    to_prior: np.ndarray,
    days: float,
) -> PatientScore:
    """Score `measure_change` for one patient. `before`/`after`: the truth of both studies (the same nodules, by
    label); `hits_*`: {truth index: candidate index} as `training.match` gives; `changes`/`prior_index`: per
    follow-up candidate, its change and the index of the baseline candidate it was paired with (None: new);
    `to_prior`: the registration's follow-up -> baseline frame map (4 x 4)."""
    index_before = {n.label: i for i, n in enumerate(before)}
    truth_of_before = {c: before[t].label for t, c in hits_before.items()}
    truth_of_after = {c: after[t].label for t, c in hits_after.items()}
    matches = false = between_fps = 0
    for current, paired in enumerate(prior_index):
        if paired is None:
            continue
        matches += 1
        label = truth_of_after.get(current)
        if label is None or truth_of_before.get(paired) != label:
            false += 1
            between_fps += label is None and paired not in truth_of_before
    outcomes = []
    for t, nodule in enumerate(after):
        b = index_before[nodule.label]
        j, k = hits_after.get(t), hits_before.get(b)
        change = changes[j] if j is not None and k is not None and prior_index[j] == k else None
        mapped = (to_prior @ np.array([*nodule.centre_lps_mm, 1.0]))[:3]
        outcomes.append(
            Outcome(
                growth_factor=nodule.volume_growth_factor,
                days=days,
                detected_in_both=j is not None and k is not None,
                matched_to_itself=change is not None,
                volume_change_pct=change.volume_change_pct if change else None,
                doubling_time_days=change.doubling_time_days if change else None,
                registration_error_mm=math.dist(mapped.tolist(), before[b].centre_lps_mm),
                unregistered_distance_mm=math.dist(nodule.centre_lps_mm, before[b].centre_lps_mm),
            )
        )
    return PatientScore(outcomes, matches, false, between_fps)


@dataclass(frozen=True)
class ChangeMetrics:
    patients: int
    nodules: int
    detected_in_both: int
    matched_to_itself: int
    correct_match_rate: float  # matched_to_itself / detected_in_both
    matches: int
    false_matches: int
    false_matches_between_false_positives: int
    volume_change_abs_error_pct: float  # mean, percentage points, over nodules matched to themselves
    volume_change_median_abs_error_pct: float
    volume_change_abs_error_pct_grown: float
    volume_change_abs_error_pct_stable: float
    grown_matched: int  # nodules that truly grew and were matched to themselves
    right_sign_of_change: float  # share of those measured as grown
    doubling_time_measured: int  # of grown_matched: those with a measured doubling time (measured as grown)
    doubling_time_abs_error_days: float  # mean over those
    doubling_time_median_abs_error_days: float
    registration_error_mm_mean: float  # over all true nodules
    registration_error_mm_max: float
    unregistered_distance_mm_mean: float


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else math.nan


def _share(outcomes: Sequence[Outcome], test: Callable[[Outcome], bool]) -> float:
    return sum(1 for o in outcomes if test(o)) / len(outcomes) if outcomes else math.nan


def summarise(scores: Sequence[PatientScore]) -> ChangeMetrics:
    outcomes = [o for s in scores for o in s.outcomes]
    both = [o for o in outcomes if o.detected_in_both]
    itself = [o for o in outcomes if o.matched_to_itself]

    def change_error(os: Sequence[Outcome]) -> list[float]:
        return [abs(o.volume_change_pct - o.true_change_pct) for o in os if o.volume_change_pct is not None]

    grown = [o for o in itself if o.growth_factor > 1.0]
    vdt = [
        abs(o.doubling_time_days - o.true_doubling_time_days)
        for o in grown
        if o.doubling_time_days is not None and o.true_doubling_time_days is not None
    ]
    registration = [o.registration_error_mm for o in outcomes]
    return ChangeMetrics(
        patients=len(scores),
        nodules=len(outcomes),
        detected_in_both=len(both),
        matched_to_itself=len(itself),
        correct_match_rate=len(itself) / len(both) if both else math.nan,
        matches=sum(s.matches for s in scores),
        false_matches=sum(s.false_matches for s in scores),
        false_matches_between_false_positives=sum(s.false_matches_between_false_positives for s in scores),
        volume_change_abs_error_pct=_mean(change_error(itself)),
        volume_change_median_abs_error_pct=_median(change_error(itself)),
        volume_change_abs_error_pct_grown=_mean(change_error(grown)),
        volume_change_abs_error_pct_stable=_mean(change_error([o for o in itself if o.growth_factor <= 1.0])),
        grown_matched=len(grown),
        right_sign_of_change=_share(grown, lambda o: (o.volume_change_pct or 0.0) > 0),
        doubling_time_measured=len(vdt),
        doubling_time_abs_error_days=_mean(vdt),
        doubling_time_median_abs_error_days=_median(vdt),
        registration_error_mm_mean=_mean(registration),
        registration_error_mm_max=max(registration, default=math.nan),
        unregistered_distance_mm_mean=_mean([o.unregistered_distance_mm for o in outcomes]),
    )


# ---------------------------------------------------------------------------------------------------------
# Running it: synthetic studies through the service's path, the model, and measure_change.


@dataclass(frozen=True)
class Study:
    ct: SyntheticCT
    sample: Sample  # read back from DICOM, on the model grid
    grid: Volume
    truth_mask: np.ndarray  # ground-truth nodule cores on the same grid

    @property
    def lesions(self) -> list[Lesion]:
        return self.sample.lesions


def read_study(ct: SyntheticCT, directory: Path) -> Study:
    sample = lung.dicom_sample(ct, directory)
    truth = lung.training_sample(ct)  # the label volume on the model grid, as in training
    if truth.volume.shape != sample.volume.shape or not np.allclose(truth.affine, sample.affine):
        raise ValueError(f"seed {ct.seed}: the phantom's grid differs from the grid read back from DICOM")
    grid = Volume(sample.volume, sample.affine, sample.spacing, "CT", "MONOCHROME2")
    return Study(ct, sample, grid, truth.mask)


def found(prob: np.ndarray, grid: Volume) -> list[Candidate]:
    """Candidates as the service finds them on the lung-nodule route (analysis.ROUTES is built from these)."""
    return labelled_candidates(prob, grid.affine, grid.spacing, lung.THRESHOLD, lung.MIN_VOLUME_MM3)[0]


def compare_studies(
    before: Study, after: Study, found_before: list[Candidate], found_after: list[Candidate], to_prior: np.ndarray
) -> PatientScore:
    days = float((after.ct.study_date - before.ct.study_date).days)
    prior = PriorStudy(
        before.ct.study_instance_uid,
        before.ct.series_instance_uid,
        before.ct.study_date,
        (),
        tuple(PriorFinding(str(k), c) for k, c in enumerate(found_before)),
    )
    comparison = measure_change(after.grid, before.grid, found_after, prior, days)
    hits_before, _ = match(found_before, before.lesions, before.grid.spacing)
    hits_after, _ = match(found_after, after.lesions, after.grid.spacing)
    prior_index = [None if i is None else int(i) for i in comparison.prior_ids]
    return score_patient(
        before.ct.nodules, after.ct.nodules, hits_before, hits_after, comparison.changes, prior_index, to_prior, days
    )


def evaluate_change(
    predict: Callable[[Sample], np.ndarray],
    seeds: Sequence[int] = lung.CHANGE_SEEDS,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """The change figures for `predict` (the calibrated lung model) and for the ground-truth masks."""
    started = time.perf_counter()
    model_scores, truth_scores = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            before = read_study(generate_ct(seed, n_nodules=NODULES_PER_PATIENT), Path(tmp) / f"{seed}-baseline")
            after = read_study(generate_followup(seed, n_nodules=NODULES_PER_PATIENT), Path(tmp) / f"{seed}-followup")
            # measure_change registers the same way (fixed sampling seed): this is its follow-up -> prior map.
            to_prior = np.linalg.inv(register_rigid(before.grid, after.grid).matrix)
            model_scores.append(
                compare_studies(
                    before,
                    after,
                    found(predict(before.sample), before.grid),
                    found(predict(after.sample), after.grid),
                    to_prior,
                )
            )
            truth_scores.append(
                compare_studies(
                    before, after, found(before.truth_mask, before.grid), found(after.truth_mask, after.grid), to_prior
                )
            )
    seconds = time.perf_counter() - started
    log(f"change against the prior: {len(seeds)} baseline + follow-up pairs in {seconds:.0f} s")
    return {
        "data": f"synthetic patients {seeds[0]}-{seeds[-1]} ({NODULES_PER_PATIENT} nodules each), baseline and "
        "follow-up written as DICOM and read back; truth from the phantoms",
        "patients": len(seeds),
        "model": asdict(summarise(model_scores)),
        "ground_truth_masks": asdict(summarise(truth_scores)),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=lung.REPO, help="the lung_nodule model folder")
    args = parser.parse_args()
    model = torch.jit.load(str(args.repository / "1" / "model.pt"), map_location="cpu").eval()
    change = evaluate_change(lung.predictor(model))
    path = args.repository / "evaluation.json"
    evaluation = json.loads(path.read_text()) if path.exists() else {"model": lung.MODEL_NAME}
    evaluation["change"] = change
    path.write_text(json.dumps(evaluation, indent=2))
    print(json.dumps({"change": change}, indent=2))


if __name__ == "__main__":
    main()
