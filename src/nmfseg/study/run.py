"""Running a study: train, predict and evaluate every (model, fold), then write the table.

:func:`run_study` checks the whole study first (:func:`~nmfseg.study.plan.plan_study`: nothing
is written when an option is wrong), then takes the jobs model by model, fold by fold, each
in three stages, every one skipped when its result is already on disk
(:mod:`nmfseg.study.plan` says how that is decided):

1. **train** the fold with :func:`~nmfseg.training.trainer.run_training` (a run killed earlier
   resumes from its ``checkpoint_last.pt``, exactly);
2. **predict** the fold's validation cases with its ``checkpoint_final.pt``
   (:func:`~nmfseg.inference.predict.predict_folder`, one case at a time, the missing or
   out-of-date ones only);
3. **evaluate** them (:func:`~nmfseg.evaluation.evaluate.evaluate_matching`, BraTS
   conventions) into ``OUT/reports/<model>/fold_K``.

Each stage prints one line with the time it took and an estimate of what is left. A stage
that raises (out of memory, a ``RuntimeError``, a diverging run...) marks its model failed
with that one-line reason and the model's remaining folds are skipped; the other models go
on. Finally every model's folds are pooled into the paper's Table 1
(:mod:`nmfseg.study.table`) and ``OUT/study.json`` records the models, folds, settings, the
status, time and error of every stage, and the files written. ``study.json`` is rewritten
(atomically) after every stage, so it also shows how far a running study is.
"""

from __future__ import annotations

import dataclasses
import gc
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nmfseg import __version__
from nmfseg.data.formats import Case, open_case, open_dataset
from nmfseg.errors import DataError, NmfsegError
from nmfseg.evaluation.compare import Comparison
from nmfseg.evaluation.evaluate import evaluate_matching, write_report
from nmfseg.evaluation.matching import find_ground_truth, match_predictions
from nmfseg.fileio import read_json, short_error, write_json
from nmfseg.inference.ensemble import load_ensemble
from nmfseg.inference.predict import predict_folder
from nmfseg.inference.predictor import Predictor
from nmfseg.study.plan import (
    CHECKPOINT,
    MANIFEST,
    STAGES,
    Job,
    StudyOptions,
    StudyPlan,
    checkpoint_stamp,
    plan_study,
    predict_command,
    predictions_to_make,
    report_is_current,
    train_command,
    training_done,
)
from nmfseg.study.table import study_comparison, write_study_table
from nmfseg.training.progress import training_seconds
from nmfseg.training.setup import prepare_run
from nmfseg.training.trainer import run_training
from nmfseg.units import format_seconds

__all__ = ["StudyResult", "job_lines", "run_plan", "run_study"]


@dataclass
class StudyResult:
    """What :func:`run_study` produced: the table, the failures and the files."""

    plan: StudyPlan
    comparison: Comparison
    failed: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    manifest: Path | None = None


def _say(message: str) -> None:
    tqdm.write(f"nmfseg study: {message}", file=sys.stderr)


def _error_line(err: BaseException) -> str:
    """One line: the message of a user error, else ``Type: message``."""
    if isinstance(err, NmfsegError):
        return short_error(err)
    return f"{type(err).__name__}: {short_error(err)}"


# --------------------------------------------------------------------------- the stages


def _train(plan: StudyPlan, job: Job, progress: bool) -> str:
    if training_done(job):
        return "finished run found"
    o = plan.options
    run = prepare_run(
        o.data_dir,
        job.model,
        job.fold,
        Path(o.out) / "runs",
        config_file=o.config_file,
        resume=True,
        fmt=o.fmt,
        **job.run_options(),
    )
    resumed = run.resume_from is not None
    run_training(run, progress=progress)
    return f"{'resumed and ' if resumed else ''}trained to step {run.config['steps']}"


def _case_input(case: Case, fmt: str) -> Path | None:
    """The path that opens ``case`` on its own (a case folder, a 4D file, a channel file)."""
    first = Path(case.image_paths[0])
    for candidate in (first, *list(first.parents)[:3]):
        try:
            if open_case(candidate, fmt).case_id == case.case_id:
                return candidate
        except NmfsegError:
            continue
    return None


def job_lines(plan: StudyPlan) -> list[str]:
    """One shell line per (model, fold) for ``--print-jobs``: ``nmfseg train ...``, then
    ``nmfseg predict`` of the fold's validation cases only, one case at a time, as the
    in-process study predicts them (the whole dataset only where its cases cannot be opened
    one by one).
    """
    dataset = open_dataset(plan.options.data_dir, plan.options.fmt)
    lines = []
    for job in plan.jobs:
        whole = predict_command(plan, job)
        inputs = [_case_input(dataset.get(cid), dataset.fmt) for cid in job.val_ids]
        if any(path is None for path in inputs):
            predicts = [whole]
        else:
            at = whole.index("-i") + 1
            predicts = [
                [*whole[:at], str(Path(path).resolve()), *whole[at + 1 :], "--quiet"]
                for path in inputs
                if path is not None
            ]
        commands = [train_command(plan, job), *predicts]
        lines.append(" && ".join(shlex.join(c) for c in commands))
    return lines


def _predict(plan: StudyPlan, job: Job, progress: bool) -> str:
    todo = predictions_to_make(job)
    if not todo:
        return f"{len(job.val_ids)} prediction(s) found"
    predictor = Predictor(load_ensemble(job.fold_dir, checkpoint=CHECKPOINT, device=job.device))
    dataset = open_dataset(plan.options.data_dir, plan.options.fmt)
    inputs = {cid: _case_input(dataset.get(cid), dataset.fmt) for cid in todo}
    failed: dict[str, str] = {}
    if any(path is None for path in inputs.values()):
        # A layout whose cases cannot be opened one by one: predict the whole folder.
        result = predict_folder(predictor, dataset.root, job.pred_dir, overwrite=True)
        failed = {cid: why for cid, why in result.failed.items() if cid in inputs}
    else:
        bar = tqdm(todo, desc="predict", unit="case", disable=not progress, file=sys.stderr)
        for cid in bar:
            result = predict_folder(
                predictor, inputs[cid], job.pred_dir, overwrite=True, progress=False
            )
            failed.update(result.failed)
    if failed:
        cid, why = next(iter(failed.items()))
        raise DataError(job.pred_dir, f"{len(failed)} case(s) not predicted ({cid}: {why})")
    return f"{len(todo)} case(s) predicted"


def _evaluate(plan: StudyPlan, job: Job, progress: bool) -> str:
    if report_is_current(job):
        return "report found"
    stamp = checkpoint_stamp(job)
    truth = find_ground_truth(plan.options.data_dir, plan.options.fmt)
    absent = [cid for cid in job.val_ids if cid not in truth.labels]
    if absent:
        raise DataError(truth.root, f"no label file for validation case {absent[0]}")
    truth = dataclasses.replace(truth, labels={cid: truth.labels[cid] for cid in job.val_ids})
    matching = match_predictions(job.pred_dir, truth)
    if matching.missing:
        raise DataError(job.pred_dir, f"no prediction for case {matching.missing[0]}")
    report = evaluate_matching(matching, progress=progress)
    report.summary["pred"] = str(job.pred_dir)
    report.summary["study"] = {"checkpoint": stamp, "cases": list(job.val_ids)}
    write_report(report, job.report_dir, plots=False)
    dice = report.summary["metrics"]["dice"]["average"]["mean"]
    return f"mean Dice {dice:.4f} on {len(report.rows)} case(s)"


_STAGE_FUNCTIONS = {"train": _train, "predict": _predict, "evaluate": _evaluate}


# --------------------------------------------------------------------------- bookkeeping


class _Clock:
    """Counts the stages and estimates the time left from the stages timed so far."""

    def __init__(self, plan: StudyPlan) -> None:
        self.total = len(plan.jobs) * len(STAGES)
        self.count = 0
        self.pending: list[tuple[str, int, str]] = []
        for job in plan.jobs:
            train = not training_done(job)
            predict = train or bool(predictions_to_make(job))
            evaluate = predict or not report_is_current(job)
            for stage, todo in zip(STAGES, (train, predict, evaluate), strict=True):
                if todo:
                    self.pending.append((job.model, job.fold, stage))
        self.spent: dict[str, list[float]] = {stage: [] for stage in STAGES}

    def done(self, job: Job, stage: str, seconds: float) -> None:
        self.count += 1
        key = (job.model, job.fold, stage)
        if key in self.pending:
            self.pending.remove(key)
            self.spent[stage].append(seconds)

    def drop(self, model: str) -> None:
        self.pending = [p for p in self.pending if p[0] != model]

    def left(self) -> str:
        if not self.pending:
            return "nothing left"
        known = [s for _, _, s in self.pending if self.spent[s]]
        seconds = sum(sum(self.spent[s]) / len(self.spent[s]) for s in known)
        untimed = len(self.pending) - len(known)
        if not known:
            return f"{untimed} stage(s) left, none of their kind timed yet"
        text = f"about {format_seconds(seconds)} left"
        return f"{text} + {untimed} stage(s) not timed yet" if untimed else text


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


class _Manifest:
    """``study.json``: written after every stage; timings of earlier sessions are kept."""

    def __init__(self, plan: StudyPlan) -> None:
        self.plan = plan
        self.path = plan.out / MANIFEST
        old: dict[str, Any] = {}
        if self.path.is_file():
            try:
                old = read_json(self.path)
            except DataError:
                old = {}
        before = {(j.get("model"), j.get("fold")): j for j in old.get("jobs", []) or []}
        self.jobs: dict[tuple[str, int], dict[str, Any]] = {}
        for job in plan.jobs:
            previous = before.get((job.model, job.fold), {}).get("stages", {})
            self.jobs[(job.model, job.fold)] = {
                "model": job.model,
                "fold": job.fold,
                "status": "pending",
                "error": None,
                "val_cases": len(job.val_ids),
                "train": [f"{s.key}={s.text}" for s in job.settings],
                "model_args": [f"{s.key}={s.text}" for s in job.arg_settings],
                "run": _rel(job.fold_dir, plan.out),
                "predictions": _rel(job.pred_dir, plan.out),
                "report": _rel(job.report_dir, plan.out),
                "stages": {
                    s: {"status": "pending", "seconds": previous.get(s, {}).get("seconds")}
                    for s in STAGES
                },
            }
        self.started = old.get("started") or _now()
        self.status = "running"
        self.failed: dict[str, str] = {}
        self.files: list[str] = []

    def stage(self, job: Job, stage: str, status: str, seconds: float | None, note: str) -> None:
        entry = self.jobs[(job.model, job.fold)]
        record = entry["stages"][stage]
        record.update(status=status, note=note)
        if seconds is not None:
            record["seconds"] = round(seconds, 3)
        if status == "failed":
            entry["status"], entry["error"] = "failed", note
        elif status == "skipped":
            entry["status"], entry["error"] = "skipped", note
        elif stage == STAGES[-1]:
            entry["status"] = "done"

    def write(self) -> None:
        p, o = self.plan, self.plan.options
        write_json(
            self.path,
            {
                "nmfseg_version": __version__,
                "status": self.status,
                "started": self.started,
                "updated": _now(),
                "data_dir": str(Path(o.data_dir).resolve()),
                "dataset": p.dataset_name,
                "format": o.fmt,
                "models": p.models,
                "folds": p.folds,
                "n_folds": p.n_folds,
                "reference": p.reference,
                "checkpoint": CHECKPOINT,
                "settings": {
                    "config": None if o.config_file is None else str(o.config_file),
                    "train": [f"{opt} {text}" for opt, text in o.train],
                    "model_args": list(o.model_args),
                },
                "failed": self.failed,
                "jobs": list(self.jobs.values()),
                "files": self.files,
            },
        )


# --------------------------------------------------------------------------- the study


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run_stage(
    plan: StudyPlan, job: Job, stage: str, clock: _Clock, book: _Manifest, progress: bool
) -> bool:
    """Run one stage, print its line, record it; False when it failed."""
    pending = (job.model, job.fold, stage) in clock.pending
    t0 = time.perf_counter()
    try:
        note = _STAGE_FUNCTIONS[stage](plan, job, progress)
    except Exception as err:  # a failing model must not stop the others
        seconds = time.perf_counter() - t0
        reason = f"fold {job.fold} {stage}: {_error_line(err)}"
        clock.done(job, stage, seconds)
        clock.drop(job.model)
        book.stage(job, stage, "failed", seconds, reason)
        _say(f"[{clock.count}/{clock.total}] {job.name} {stage}: FAILED after "
             f"{format_seconds(seconds)}: {_error_line(err)}; {clock.left()}")  # fmt: skip
        _free_memory()
        return False
    seconds = time.perf_counter() - t0
    clock.done(job, stage, seconds)
    if pending:
        # a resumed training's time is every session's, as its log.csv counts it
        recorded = (training_seconds(job.fold_dir) if stage == "train" else None) or seconds
        book.stage(job, stage, "done", recorded, note)
        took = f" in {format_seconds(seconds)}"
    else:
        known = book.jobs[(job.model, job.fold)]["stages"][stage]["seconds"]
        if known is None and stage == "train":
            known = training_seconds(job.fold_dir)
        book.stage(job, stage, "reused", known, note)
        took = ""
    _say(f"[{clock.count}/{clock.total}] {job.name} {stage}: {note}{took}; {clock.left()}")
    return True


def run_plan(plan: StudyPlan, progress: bool = True) -> StudyResult:
    """Run (or continue) a checked study and write its table and ``study.json``."""
    plan.out.mkdir(parents=True, exist_ok=True)
    book = _Manifest(plan)
    clock = _Clock(plan)
    book.write()
    failed: dict[str, str] = {}
    for job in plan.jobs:
        if job.model in failed:
            clock.count += len(STAGES)
            for stage in STAGES:
                book.stage(job, stage, "skipped", None, f"skipped: {failed[job.model]}")
            book.write()
            continue
        for stage in STAGES:
            ok = _run_stage(plan, job, stage, clock, book, progress)
            book.write()
            if not ok:
                failed[job.model] = book.jobs[(job.model, job.fold)]["error"]
                clock.count += len(STAGES) - 1 - STAGES.index(stage)
                break
    _say("writing the table: pooling the folds, counting #params and FLOPs")
    comparison = study_comparison(plan, failed)
    files = write_study_table(plan, comparison)
    book.failed = dict(failed)
    book.status = "failed" if failed else "done"
    book.files = [_rel(p, plan.out) for p in files]
    book.write()
    return StudyResult(plan, comparison, dict(failed), files, book.path)


def run_study(options: StudyOptions, progress: bool = True) -> StudyResult:
    """Check a study (writing nothing if anything is wrong), then run or continue it.

    Args:
        options: what to compare (see :class:`~nmfseg.study.plan.StudyOptions`).
        progress: show the trainer's and the predictor's progress bars (the one line per
            stage is always printed).

    Returns:
        A :class:`StudyResult`; ``failed`` names the models that failed, with the reason.

    Raises:
        ConfigError / DataError: a bad option or input, found before anything is written.
    """
    return run_plan(plan_study(options), progress=progress)
