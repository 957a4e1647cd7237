"""Figures and ``report.md`` of the demo (:mod:`nmfseg.demo.run`).

Three figures, all from held-out phantoms:

- ``overlays.png``: FLAIR with the ground-truth and predicted regions of each model, on the
  axial slice through the largest tumour cross-section of a few cases;
- ``nmf_components.png``: the NMF spatial components of the first and last Factorizer block
  (paper Fig. 6), dematricized with :func:`nmfseg.mixers.nmf.factor_maps`;
- each model's ``progress.png`` (loss, Dice, learning rate), copied from its run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nmfseg.analysis.explain import explain_case
from nmfseg.data.formats import load_case, open_dataset
from nmfseg.data.nifti import read_nifti
from nmfseg.data.schemes import labels_to_regions
from nmfseg.demo.config import model_train_config
from nmfseg.evaluation.compare import format_table, format_tests
from nmfseg.fileio import write_bytes, write_text
from nmfseg.inference.predictor import Predictor
from nmfseg.plotting import IMAGE_CMAP, LABEL, REGION_COLOURS, figure

__all__ = ["nmf_component_figure", "overlay_figure", "write_demo_report"]


def _tumour_slice(regions: np.ndarray) -> int:
    """Axial index (last axis) with the largest whole-tumour area."""
    area = regions[-1].reshape(-1, regions.shape[-1]).sum(0)
    return int(area.argmax()) if area.any() else regions.shape[-1] // 2


def _show(ax: Any, image: np.ndarray, title: str) -> None:
    lo, hi = np.percentile(image[image != 0], (1, 99)) if (image != 0).any() else (0, 1)
    ax.imshow(np.rot90(image), cmap=IMAGE_CMAP, vmin=lo, vmax=hi)
    ax.set_title(title, fontsize=LABEL)
    ax.axis("off")


def _contours(ax: Any, regions: np.ndarray, names: list[str]) -> None:
    for k in range(len(names) - 1, -1, -1):  # WT (outermost) first
        mask = np.rot90(regions[k]).astype(float)
        if mask.any():
            colour = REGION_COLOURS.get(names[k], "w")
            ax.contour(mask, levels=[0.5], colors=[colour], linewidths=0.8)


def overlay_figure(
    test_dir: Path, pred_dirs: dict[str, Path], path: Path, n_cases: int = 3
) -> Path:
    """FLAIR + truth + each model's prediction on a few held-out cases."""
    from matplotlib.lines import Line2D  # heavy: only when a figure is drawn

    dataset = open_dataset(test_dir)
    scheme = dataset.scheme
    names = list(scheme.region_names)
    cases = dataset.cases[:n_cases]
    cols = 1 + len(pred_dirs)
    with figure(path, (2.6 * cols, 2.7 * len(cases)), layout=None) as fig:
        axes = fig.subplots(len(cases), cols, squeeze=False)
        for row, case in enumerate(cases):
            data = load_case(case)
            truth = labels_to_regions(data.label, scheme)
            z = _tumour_slice(truth)
            flair = data.image[0][..., z]
            _show(axes[row, 0], flair, f"{case.case_id}: truth")
            _contours(axes[row, 0], truth[..., z], names)
            for col, (model, folder) in enumerate(pred_dirs.items(), start=1):
                pred, _ = read_nifti(folder / f"{case.case_id}.nii.gz", dtype=np.int16)
                _show(axes[row, col], flair, model)
                _contours(axes[row, col], labels_to_regions(pred, scheme)[..., z], names)
        shown = [n for n in names if n in REGION_COLOURS]
        handles = [Line2D([], [], color=REGION_COLOURS[n], label=n) for n in shown]
        fig.legend(
            handles=handles, loc="lower center", ncol=len(handles), fontsize=LABEL, frameon=False
        )
        fig.tight_layout(rect=(0, 0.04, 1, 1))
    return path


def nmf_component_figure(fold_dir: Path, test_dir: Path, path: Path) -> Path | None:
    """NMF spatial components of the first and last block (paper Fig. 6) on one case.

    The panel of ``nmfseg explain`` (:func:`nmfseg.analysis.explain.explain_case`) on the
    first held-out case, without its NIfTI maps. Returns ``None`` for a network without NMF
    layers.
    """
    predictor = Predictor.from_run(fold_dir)
    if not predictor.has_nmf:
        return None
    case = open_dataset(test_dir).cases[0]
    result = explain_case(
        predictor, case, path.parent, layers="first,last", write_maps=False, panel=path.name
    )
    return result.panel


def _config_lines(cfg: dict[str, Any], names: list[str]) -> list[str]:
    train, data = cfg["train"], cfg["data"]
    lines = [
        f"- Data: {data.get('train_cases')} training phantoms (fold {cfg.get('fold', 0)} of a "
        f"5-fold split: the fold's validation cases pick `checkpoint_best.pt`) and "
        f"{data.get('test_cases')} held-out test phantoms from another seed; "
        f"{data.get('spacing')} mm grid, MSD Task01 format.",
        f"- Training: {train.get('steps')} steps, batch {train.get('batch_size')}, patch "
        f"{train.get('patch_size')}; the paper's loss (Dice + BCE, deep supervision) and "
        "Appendix A augmentations; AdamW, linear warm-up then cosine.",
    ]
    for name in names:
        args = cfg["models"].get(name) or {}
        text = ", ".join(f"{k}={v}" for k, v in args.items()) or "preset defaults"
        own = model_train_config(cfg, name)
        opt = own.get("optimizer", {})
        clip = opt.get("grad_clip")
        lines.append(
            f"- `{name}`: {text}; {own.get('steps')} steps, lr {opt.get('lr')}, warm-up "
            f"{own.get('scheduler', {}).get('warmup_steps')}, gradient clipping "
            f"{clip if clip else 'off'}."
        )
    return lines


def write_demo_report(
    out: Path,
    cfg: dict[str, Any],
    names: list[str],
    fold_dirs: dict[str, Path],
    comparison: Any,
    test_dir: Path,
    timings: dict[str, float],
    targets: dict[str, float],
) -> Path:
    """Write ``out/report.md`` and its figures; return the report's path."""
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    overlay_figure(test_dir, {n: out / "predictions" / n for n in names}, figures / "overlays.png")
    nmf_figs = _model_figures(names, fold_dirs, test_dir, figures)
    lines = [
        *_results_lines(comparison, names, targets),
        *_settings_lines(cfg, names, timings),
        *_figure_lines(names, nmf_figs),
    ]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path


def _model_figures(
    names: list[str], fold_dirs: dict[str, Path], test_dir: Path, figures: Path
) -> dict[str, Path]:
    """Each model's ``progress.png`` copied into ``figures``, and its NMF component panel
    (none for a network without NMF layers): ``{model: panel}``."""
    nmf_figs = {}
    for name in names:
        write_bytes(
            figures / f"progress_{name}.png", (fold_dirs[name] / "progress.png").read_bytes()
        )
        fig = nmf_component_figure(fold_dirs[name], test_dir, figures / f"nmf_{name}.png")
        if fig is not None:
            nmf_figs[name] = fig
    return nmf_figs


def _results_lines(comparison: Any, names: list[str], targets: dict[str, float]) -> list[str]:
    """The title, what the numbers are, the held-out table (and tests), the targets met."""
    ref = comparison.reference
    means = comparison.means[ref]["dice"]
    verdict = [
        f"| {region} | {means[region]:.3f} | {goal:.2f} | "
        f"{'met' if means[region] >= goal else 'NOT met'} |"
        for region, goal in targets.items()
        if region in means
    ]
    return [
        "# nmfseg demo report",
        "",
        "Synthetic BraTS-like phantoms (MNI152 template from nilearn), trained and evaluated on "
        "the CPU. These are phantoms, not patients: the numbers show that the pipeline runs "
        "and learns, not clinical accuracy.",
        "",
        "## Held-out test set",
        "",
        "Mean Dice (%) and HD95 (mm) per region, BraTS conventions for empty masks "
        "(both empty: Dice 100, HD95 0; one empty: Dice 0, HD95 373.13).",
        "",
        format_table(comparison),
        "",
        format_tests(comparison) if len(names) > 1 else "",
        "",
        f"Targets for `{ref}` (mean Dice on held-out phantoms):",
        "",
        "| region | reached | target | |",
        "| --- | --- | --- | --- |",
        *verdict,
        "",
    ]


def _settings_lines(cfg: dict[str, Any], names: list[str], timings: dict[str, float]) -> list[str]:
    """The settings of the data and of every model, and the time of every step."""
    return [
        "## Settings",
        "",
        *_config_lines(cfg, names),
        "",
        "## Time (this machine)",
        "",
        "| step | seconds |",
        "| --- | --- |",
        *(f"| {k} | {v:.0f} |" for k, v in timings.items()),
        "",
    ]


def _figure_lines(names: list[str], nmf_figs: dict[str, Path]) -> list[str]:
    """The figures: overlays, each model's training curves, the NMF component panels."""
    lines = [
        "## Figures",
        "",
        "Prediction vs truth on held-out cases (contours: WT green, TC red, ET yellow):",
        "",
        "![overlays](figures/overlays.png)",
        "",
    ]
    for name in names:
        lines += [
            f"Training curves of `{name}`:",
            "",
            f"![progress](figures/progress_{name}.png)",
            "",
        ]
    for name, fig in nmf_figs.items():
        lines += [
            f"NMF components of `{name}`, first and last block (paper Fig. 6):",
            "",
            f"![nmf](figures/{fig.name})",
            "",
        ]
    return lines
