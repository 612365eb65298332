"""CGM traces of simglucose's 30 virtual type-1 patients (UVA/Padova 2008 model) under a basal-bolus regimen.

simglucose's own environment loop spends most of its time in pandas look-ups (15 s per simulated day here);
this loop drives the same patient ODE, meal generator and CGM noise model directly (under 1 s per day). The
regimen is simglucose's BBController (basal u2ss, meal bolus carbs/CR plus a correction above 150 mg/dL) with
the carb-counting error and day-to-day basal mismatch of real self-management, so that hypoglycaemia happens
for reasons the CGM trace can show. Traces are cached as .npz keyed by every generation parameter.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from training.glycaemia.sequences import STEP_MIN

GENERATOR_VERSION = 1  # bump when the loop below changes what it generates
PATIENTS = tuple(f"{group}#{i:03d}" for group in ("adolescent", "adult", "child") for i in range(1, 11))
TEST_PATIENTS = ("adolescent#009", "adolescent#010", "adult#009", "adult#010", "child#009", "child#010")
TRAIN_PATIENTS = tuple(p for p in PATIENTS if p not in TEST_PATIENTS)
DEFAULT_CACHE = Path.home() / ".cache" / "medstream" / "simglucose"
SENSOR = "GuardianRT"  # simglucose's 5-minute CGM
TARGET_MG_DL = 140.0  # BBController default
CORRECTION_ABOVE_MG_DL = 150.0


@dataclass(frozen=True)
class Cohort:
    patients: tuple[str, ...]
    days: int
    seed: int
    carb_error_sd: float = 0.2  # log-normal sd of the carb estimate the bolus is computed from
    basal_error_sd: float = 0.1  # log-normal sd of each day's basal rate against the patient's true need

    def key(self) -> str:
        fields = {**asdict(self), "patients": sorted(self.patients)}  # a patient's trace does not depend on order
        payload = json.dumps({"version": GENERATOR_VERSION, "sensor": SENSOR, **fields}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def simulate_patient(name: str, days: int, seed: int, carb_error_sd: float, basal_error_sd: float) -> np.ndarray:
    """One patient's CGM every 5 min (mg/dL, float32) over `days` days from midnight."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # simglucose and gym import pkg_resources, which warns
        try:
            import pandas as pd
            from simglucose.controller.basal_bolus_ctrller import CONTROL_QUEST
            from simglucose.patient.t1dpatient import PATIENT_PARA_FILE, Action, T1DPatient
            from simglucose.sensor.cgm import CGMSensor
            from simglucose.simulation.scenario_gen import RandomScenario
        except ModuleNotFoundError as e:
            if e.name != "pkg_resources":
                raise
            raise RuntimeError("simglucose 0.2.11 needs pkg_resources, gone from setuptools>=81") from e

    rng = np.random.default_rng(seed)
    params = pd.read_csv(PATIENT_PARA_FILE).set_index("Name", drop=False).loc[name]
    quest = pd.read_csv(CONTROL_QUEST).set_index("Name").loc[name]
    patient = T1DPatient(params, random_init_bg=True, seed=seed)
    # The ODE right-hand side reads ~40 parameters per call: plain floats, not a pandas Series, make this loop fast.
    patient._params = SimpleNamespace(**{k: v if isinstance(v, str) else float(v) for k, v in params.items()})
    sensor = CGMSensor.withName(SENSOR, seed=seed)
    scenario = RandomScenario(start_time=datetime(2024, 1, 1), seed=seed)
    basal_need = float(params.u2ss * params.BW / 6000)  # U/min that holds the patient's basal steady state

    cgm = [float(sensor.measure(patient))]
    bolus_rate = 0.0
    announced = 0.0  # carbs announced since the last CGM reading
    for day in range(days):
        meals = scenario.create_scenario()["meal"]
        meal_at: dict[int, float] = {}
        for t, amount in zip(meals["time"], meals["amount"], strict=True):
            meal_at[int(t)] = meal_at.get(int(t), 0.0) + float(amount)
        basal = basal_need * float(np.exp(rng.normal(0.0, basal_error_sd)))
        for minute in range(24 * 60):
            carbs = meal_at.get(minute, 0.0)
            announced += carbs
            patient.step(Action(CHO=carbs, insulin=basal + bolus_rate))
            if (day * 24 * 60 + minute + 1) % STEP_MIN == 0:
                reading = float(sensor.measure(patient))
                cgm.append(reading)
                # BBController: bolus for the carbs announced since the last reading, given over the next 5 minutes
                bolus = 0.0
                if announced > 0:
                    estimate = announced * float(np.exp(rng.normal(0.0, carb_error_sd)))
                    bolus = estimate / quest.CR
                    if reading > CORRECTION_ABOVE_MG_DL:
                        bolus += (reading - TARGET_MG_DL) / quest.CF
                bolus_rate, announced = bolus / STEP_MIN, 0.0
    return np.asarray(cgm, dtype=np.float32)


def generate(cohort: Cohort, cache_dir: Path = DEFAULT_CACHE, workers: int | None = None) -> dict[str, np.ndarray]:
    """CGM trace per patient name, simulated in parallel processes or read from the cache."""
    path = cache_dir / f"{cohort.key()}.npz"
    if path.exists():
        with np.load(path) as cached:
            return {name: cached[name] for name in cohort.patients}
    jobs = [
        (name, cohort.days, cohort.seed * 1000 + PATIENTS.index(name), cohort.carb_error_sd, cohort.basal_error_sd)
        for name in cohort.patients
    ]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers > 1:
        # fork, not spawn: spawn re-runs the caller's main script. Children run only numpy and scipy, and callers
        # simulate before any torch work, so no OpenMP pool is forked mid-use.
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            traces = list(pool.map(simulate_patient, *zip(*jobs, strict=True)))
    else:
        traces = [simulate_patient(*job) for job in jobs]
    result = dict(zip(cohort.patients, traces, strict=True))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **result)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return result
