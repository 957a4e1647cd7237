"""``nmfseg ablate``: free speed-ups of a trained Factorizer, measured (paper §4.5, Fig. 8).

On the validation cases of the fold a model was trained on, the NMF layers are changed at
inference only (:class:`~nmfseg.inference.predictor.Predictor`'s NMF switches) and every
setting is scored like the trainer's validation (same preprocessing and sliding window,
threshold, Dice per region with the BraTS empty-mask convention, mean over cases) and timed
(the network's sliding window only, after one untimed warm-up case). Every pass over a case
with the setting is followed by one with the unmodified model, and each keeps the fastest of
``repeats`` passes: the speed-up is the ratio of the two sums over the cases, measured side by
side, because a CPU's speed drifts by tens of percent over minutes, more than most of the
speed-ups (timing the reference once at the start ranked the settings by that drift).
The sweeps, each a CSV in the output folder:

- ``layers.csv``: (a) keep only the first ``k`` NMF layers, ``k = 0 … L``;
- ``remove.csv``: (b) remove one NMF layer at a time;
- ``iters.csv``: (c) ``T`` NMF iterations (default 1 … 20);
- ``rank.csv``: (d) rank ``R`` (default 1 … 8) with HALS and with MU;

plus ``reference.csv`` (the unmodified model), ``ablation.png`` (the four panels of Fig. 8
with the unmodified model as a dashed line) and ``fastest.csv`` / ``fastest.md``: the
settings whose mean Dice is within one Dice point of the unmodified model, fastest first,
with their speed-up and the ``nmfseg predict`` options that deploy them. Before the sweep, one
timed pass of the unmodified model gives an estimate of the whole sweep (printed, and on the
progress bar); afterwards, the spread of the unmodified model's own times over the settings
is the timing noise, and a speed-up within it is reported as noise, not as a faster setting
(:mod:`nmfseg.analysis.ablate_report`). The settings and their sweeps are
:mod:`nmfseg.analysis.ablate_plan`'s, re-exported here.

Layers are 0-based in network order (encoder, bridge, decoder; the paper counts from 1).
A setting that leaves the network as trained (``k = L``, the trained ``T``, rank and solver)
repeats the reference's row. Every CSV is rewritten after each setting, so an interrupted
run resumes: a setting already in its CSV is not redone (``ablate.json`` records the model,
cases and sliding window, and a folder holding another ablation is refused).

Examples::

    >>> [s.key for s in plan_settings(3, ["layers", "rank"], ranks=[2], solvers=["mu"])]
    ['keep=0', 'keep=1', 'keep=2', 'keep=3', 'rank=2,mu']
    >>> plan_settings(3, ["layers"])[1].options(3)
    '--nmf-layers 0'
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from nmfseg.analysis.ablate_plan import (
    SWEEPS,
    AblationSetting,
    parse_int_list,
    parse_sweeps,
    plan_settings,
)
from nmfseg.analysis.ablate_report import (
    estimate_seconds,
    fastest_rows,
    format_estimate,
    timing_noise,
    write_fastest,
)
from nmfseg.analysis.figures import ablation_figure
from nmfseg.analysis.runs import validation_ids
from nmfseg.data.formats import Dataset, load_case
from nmfseg.data.normalization import Preprocessing
from nmfseg.data.preprocess import preprocess_case, restore
from nmfseg.data.schemes import labels_to_regions
from nmfseg.errors import ConfigError
from nmfseg.evaluation.metrics import dice_score
from nmfseg.fileio import read_json, write_json, write_text
from nmfseg.inference.ensemble import output_scheme
from nmfseg.inference.predictor import Predictor
from nmfseg.inference.settings import format_layers
from nmfseg.nmf import SOLVERS

__all__ = [
    "RECORD",
    "SWEEPS",
    "AblationResult",
    "AblationSetting",
    "parse_int_list",
    "parse_sweeps",
    "plan_settings",
    "run_ablation",
]

RECORD = "ablate.json"
_NMF_KEYS = ("nmf_iters", "nmf_rank", "nmf_solver", "nmf_layers")


@dataclass
class AblationResult:
    """What :func:`run_ablation` produced.

    Attributes:
        out: The output folder.
        reference: The unmodified model's row.
        rows: The rows of every sweep that was run.
        fastest: Rows within one Dice point of the reference, fastest first.
        computed: Settings evaluated by this call (the others were already in the CSVs).
        repeats: Passes over each case per setting (its time is the fastest).
        noise: How much the unmodified model's own time varied between the settings
            (:func:`~nmfseg.analysis.ablate_report.timing_noise`; ``None``: too few).
        estimate: The time the sweep was estimated to take before it started (seconds).
    """

    out: Path
    reference: dict[str, Any]
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fastest: list[dict[str, Any]] = field(default_factory=list)
    computed: int = 0
    repeats: int = 1
    noise: float | None = None
    estimate: float | None = None


class _Cases:
    """The validation cases, preprocessed once and kept in memory up to a budget."""

    def __init__(
        self, dataset: Dataset, ids: list[str], budget: int, preprocessing: Preprocessing
    ) -> None:
        self.dataset, self.ids, self.budget = dataset, ids, budget
        self.preprocessing = preprocessing
        self.kept: dict[str, tuple[Any, ...]] = {}
        self.size = 0

    def _load(self, case_id: str) -> tuple[Any, ...]:
        data = load_case(self.dataset.get(case_id))
        x, _, crop = preprocess_case(
            data.image, where=case_id, spacing=data.spacing, preprocessing=self.preprocessing
        )
        truth = labels_to_regions(data.label, self.dataset.scheme).astype(bool)
        return x, crop, truth

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for case_id in self.ids:
            entry = self.kept.get(case_id) or self._load(case_id)
            nbytes = entry[0].nbytes + entry[2].nbytes
            if case_id not in self.kept and self.size + nbytes <= self.budget:
                self.kept[case_id] = entry
                self.size += nbytes
            yield entry


def _timed(predictor: Predictor, x: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    probs = predictor.predict_preprocessed(x)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize(predictor.device)
    return probs, time.perf_counter() - start


def _counted(cases: Any, bar: Any) -> Iterator[tuple[Any, ...]]:
    """The cases, one step of the whole sweep's progress bar each."""
    for case in cases:
        yield case
        bar.update(1)


def _evaluate(
    predictor: Predictor,
    cases: Iterator[tuple[Any, ...]],
    n: int,
    regions: Sequence[str],
    repeats: int = 1,
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score and time the configured setting; with ``changes`` (the setting's own
    :meth:`Predictor.configure` arguments) also time the unmodified model, interleaved."""
    reference = AblationSetting("reference", "").changes()
    seconds = paired = 0.0
    dice: dict[str, list[float]] = {r: [] for r in regions}
    for x, crop, truth in cases:
        best = ref_best = float("inf")
        probs = None
        for _ in range(repeats):
            out, took = _timed(predictor, x)
            probs = out if probs is None else probs
            best = min(best, took)
            if changes is not None:
                predictor.configure(**reference)
                ref_best = min(ref_best, _timed(predictor, x)[1])
                predictor.configure(**changes)
        seconds += best
        paired += ref_best if changes is not None else best
        pred = restore(probs, crop) >= predictor.threshold
        for r, name in enumerate(regions):
            dice[name].append(dice_score(pred[r], truth[r]))
    means = {f"dice_{r}": float(np.mean(v)) for r, v in dice.items()}
    return {
        "n_cases": n,
        **means,
        "dice_mean": float(np.mean(list(means.values()))),
        "seconds": seconds,
        "seconds_per_case": seconds / n,
        "reference_seconds_per_case": paired / n,
        "speedup": paired / seconds if seconds else 0.0,
    }


def _fields(regions: Sequence[str]) -> list[str]:
    return [
        "key", "value", *_NMF_KEYS, "n_cases", *(f"dice_{r}" for r in regions), "dice_mean",
        "seconds", "seconds_per_case", "reference_seconds_per_case", "speedup", "options", "note",
    ]  # fmt: skip


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, rows: Sequence[dict[str, Any]], regions: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_fields(regions), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _text(row.get(k)) for k in _fields(regions)})
    write_text(path, buffer.getvalue())


def _text(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return format_layers(value, None)
    return "" if value is None else value


def _record(predictor: Predictor, data: Dataset, ids: list[str], repeats: int) -> dict[str, Any]:
    settings = {k: v for k, v in predictor.resolved_settings().items() if k not in _NMF_KEYS}
    settings.pop("compile", None)
    return {
        "model": predictor.model_name,
        "checkpoint": str(Path(predictor.ensemble.sources[0]).resolve()),
        "fold": predictor.ensemble.config.get("fold"),
        "data": str(Path(data.root).resolve()),
        "cases": ids,
        "settings": settings,
        "repeats": repeats,
        "timing": "paired with the unmodified model",
    }


def _check_record(out: Path, record: dict[str, Any]) -> None:
    path = out / RECORD
    if not path.is_file():
        return
    old = read_json(path)
    differ = [k for k in record if old.get(k) != record[k]]
    if differ:
        raise ConfigError(
            f"{out} holds an ablation with different {', '.join(differ)} (see {RECORD}); "
            "choose another -o, or delete the folder to start again"
        )


def _echo(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def run_ablation(
    predictor: Predictor,
    data: Dataset,
    out: str | Path,
    *,
    sweeps: Sequence[str] = SWEEPS,
    iters: Sequence[int] = range(1, 21),
    ranks: Sequence[int] = range(1, 9),
    solvers: Sequence[str] = SOLVERS,
    repeats: int = 3,
    cache_bytes: int = 2 << 30,
    progress: bool = True,
) -> AblationResult:
    """Evaluate every setting of the chosen sweeps and write the CSVs, table and figure.

    Args:
        predictor: One fold of a trained Factorizer (its config names its validation cases).
        data: The dataset the model was trained on.
        out: Output folder (an interrupted run in it is resumed).
        sweeps: Which of :data:`SWEEPS` to run.
        iters: ``T`` values of the ``iters`` sweep.
        ranks: ``R`` values of the ``rank`` sweep.
        solvers: Solvers of the ``rank`` sweep.
        repeats: Passes over each case per setting; its time is the fastest (Dice from the
            first; the predictions are deterministic).
        cache_bytes: Preprocessed cases kept in memory between settings (the rest are read
            again for every setting).
        progress: A progress bar over each setting's cases (the per-setting line is always
            printed).

    Raises:
        ConfigError: Not a Factorizer, another ablation in the folder, no allowed rank.
        DataError: ``data`` lacks the validation cases or their labels.
    """
    ids, regions = _check_ablation(predictor, data, repeats)
    out = Path(out)
    # after every check that can refuse the run, so that a note is never followed by an error
    ranks = predictor.usable_ranks(ranks, _echo) if "rank" in sweeps else ranks  # or refused
    record = _record(predictor, data, ids, repeats)
    _check_record(out, record)
    write_json(out / RECORD, record)
    n_layers = len(predictor.ensemble.models[0].nmf_layers())
    plan = [
        AblationSetting("reference", "reference"),
        *plan_settings(n_layers, sweeps, iters, ranks, solvers),
    ]
    rows = {s: _read_rows(out / f"{s}.csv") for s in ("reference", *sweeps)}
    todo = _settings_to_do(plan, rows, out)
    cases = _Cases(data, ids, cache_bytes, predictor.ensemble.preprocessing)
    predictor.configure(predictor.settings.replace(**AblationSetting("reference", "").changes()))
    trained = {k: predictor.resolved_settings()[k] for k in _NMF_KEYS}
    result = AblationResult(out, {}, repeats=repeats)
    bar = tqdm(total=0, unit="case", disable=not (progress and todo), file=sys.stderr)
    if todo:
        result.estimate = _announce_estimate(predictor, cases, len(todo), repeats, bar)
    sweep = _Sweep(predictor, cases, bar, regions, repeats, trained)
    for i, setting in enumerate(todo, start=1):
        row = sweep.measure(setting, rows["reference"])
        row["options"] = setting.options(n_layers)
        rows[setting.sweep].append(row)
        _write_rows(out / f"{setting.sweep}.csv", rows[setting.sweep], regions)
        result.computed += 1
        _echo(_setting_line(f"{i}/{len(todo)}", setting, row, regions))
    bar.close()
    predictor.configure(**AblationSetting("reference", "").changes())
    _summarize(result, rows, sweeps, regions)
    ablation_figure(
        out / "ablation.png",
        result.rows,
        result.reference,
        title=f"{predictor.model_name}, fold {record['fold']}: {len(ids)} validation cases",
    )
    return result


def _check_ablation(
    predictor: Predictor, data: Dataset, repeats: int
) -> tuple[list[str], list[str]]:
    """The validation case ids and the region names of an ablation that can run, after
    refusing one that cannot: no NMF layers, another dataset's regions, ``repeats < 1``."""
    if not predictor.has_nmf:
        raise ConfigError(
            f"the network {predictor.model_name} has no NMF layers; ablate changes the NMF "
            "layers of Factorizers"
        )
    sources = predictor.ensemble.sources
    ids = validation_ids(predictor.ensemble.config, data, sources[0] if sources else "model")
    scheme, note = output_scheme(data, predictor.ensemble)
    if note:
        raise ConfigError(f"{data.root}: the dataset's regions are not the model's ({note})")
    if repeats < 1:
        raise ConfigError(f"repeats {repeats}: must be at least 1")
    return ids, list(scheme.region_names)


def _settings_to_do(
    plan: list[AblationSetting], rows: dict[str, list[dict[str, Any]]], out: Path
) -> list[AblationSetting]:
    """The settings of ``plan`` not yet in their CSV (an interrupted run resumes), said."""
    done = {s: {r["key"] for r in found} for s, found in rows.items()}
    todo = [s for s in plan if s.key not in done[s.sweep]]
    if len(plan) > len(todo):
        _echo(f"[ablate] {len(plan) - len(todo)} of {len(plan)} settings already in {out}")
    return todo


def _announce_estimate(
    predictor: Predictor, cases: _Cases, settings: int, repeats: int, bar: Any
) -> float:
    """Time one pass of the unmodified model (after an untimed warm-up) and say what the
    whole sweep will take, printed and on the progress bar; the estimate in seconds."""
    n = len(cases.ids)
    x = next(iter(cases))[0]
    predictor.predict_preprocessed(x)  # warm-up, untimed
    one = _timed(predictor, x)[1]  # one pass of the unmodified model: the estimate's unit
    seconds = estimate_seconds(one, settings, n, repeats)
    estimate = format_estimate(seconds, settings, n, repeats, one)
    _echo(f"[ablate] {estimate}")
    bar.reset(total=settings * n)
    bar.set_description(f"ablate (estimated {estimate.split(':')[0]})")
    return seconds


@dataclass
class _Sweep:
    """What every setting of one run shares: the model, its cases, the progress bar, the
    regions scored, the passes per case and the NMF settings as trained."""

    predictor: Predictor
    cases: _Cases
    bar: Any
    regions: list[str]
    repeats: int
    trained: dict[str, Any]

    def measure(self, setting: AblationSetting, reference: list[dict[str, Any]]) -> dict[str, Any]:
        """The row of one setting: scored and timed beside the unmodified model, or the
        reference's numbers for a setting that leaves the network as trained."""
        n = len(self.cases.ids)
        self.predictor.configure(**setting.changes())
        state = {k: self.predictor.resolved_settings()[k] for k in _NMF_KEYS}
        row: dict[str, Any] = {"key": setting.key, "value": setting.value, **state}
        if setting.sweep != "reference" and state == self.trained and reference:
            same = reference[0]
            keys = ("dice_", "seconds", "reference_seconds", "speedup", "n_")
            row.update({k: same[k] for k in same if k.startswith(keys)})
            row["note"] = "as trained (= reference)"
            self.bar.update(n)
        else:
            self.bar.set_postfix_str(setting.key)
            changes = None if setting.sweep == "reference" else setting.changes()
            cases = _counted(self.cases, self.bar)
            row.update(_evaluate(self.predictor, cases, n, self.regions, self.repeats, changes))
        return row


def _setting_line(
    count: str, setting: AblationSetting, row: dict[str, Any], regions: list[str]
) -> str:
    """The line printed after a setting: its Dice (mean and per region), time and speed-up."""
    per_region = ", ".join(f"{r} {100 * float(row[f'dice_{r}']):.1f}" for r in regions)
    return (
        f"[ablate] {count} {setting.sweep} {setting.key}: Dice "
        f"{100 * float(row['dice_mean']):.1f} ({per_region}), "
        f"{float(row['seconds_per_case']):.3g} s/case, {float(row['speedup']):.2f}x"
    )


def _summarize(
    result: AblationResult,
    rows: dict[str, list[dict[str, Any]]],
    sweeps: Sequence[str],
    regions: list[str],
) -> None:
    """Fill ``result`` from every row (the reference, the sweeps, the fastest settings and
    the timing noise) and write ``fastest.csv`` / ``fastest.md``."""
    result.reference = rows["reference"][0]
    result.rows = {s: rows[s] for s in sweeps}
    timed = [r for s in sweeps for r in rows[s]]
    result.fastest = fastest_rows(result.reference, timed)
    result.noise = timing_noise(timed)
    write_fastest(
        result.out, result.fastest, result.reference, regions, result.repeats, result.noise
    )
