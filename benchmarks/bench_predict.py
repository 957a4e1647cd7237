"""Benchmark: whole-volume prediction of one BraTS-sized case, the way a user runs it.

One synthetic BraTS case (what ``nmfseg synth brats --spacing 1 --shape 240,240,155
--cases 1`` writes; generated once and cached in ``--work``) is predicted by untrained,
seeded networks (weights do not change the time) through the user's path:
:class:`~nmfseg.inference.predictor.Predictor` on an in-memory
:class:`~nmfseg.inference.ensemble.Ensemble` and
:func:`~nmfseg.inference.predict.predict_folder`: read the case, crop to the nonzero box,
z-score, sliding window (128³ windows, 50% overlap, Gaussian blending, one window per
forward pass, no TTA), sigmoid, threshold, write the label map. Configurations:

- ``segresnet_brats``, the reference (MONAI SegResNet, init_filters 32, blocks 1-2-2-4);
- ``swin_factorizer_brats``;
- ``swin_factorizer_brats --nmf-iters 2`` and ``--nmf-layers none``: the same network with
  the inference-time NMF switches of the paper's §4.5;
- with ``--bf16``, ``segresnet_brats --amp bf16`` and ``swin_factorizer_brats --amp bf16``:
  both networks under bf16 autocast (``nmfseg predict --amp bf16``; the NMF itself stays
  float32), still against plain SegResNet;
- with ``--onnx``, ``swin_factorizer_brats (onnxruntime)``: the same network exported as
  ``nmfseg export`` does (traced at one window; ``bench_export.py`` checks the export against
  PyTorch) and run by onnxruntime on the CPU, as ``nmfseg predict --engine onnxruntime`` does.

Every network first predicts one window (warm-up); then the configurations are interleaved,
one prediction of each per round, and each number is the median over ``--repeats`` rounds
of the wall-clock time (and of the process CPU time, all threads summed), with its ratio to
SegResNet. The report names the machine (CPU model, threads, load).

Output: a Markdown table on stdout; with ``--out DIR`` also ``bench_predict.md``, ``.csv``
and ``.json`` (finished rounds: an interrupted run resumes). The predictions themselves go
to ``WORK/predictions/<configuration>/``.

Usage::

    python benchmarks/bench_predict.py --out bench_out                  # 240×240×155, 2 threads
    python benchmarks/bench_predict.py --shape 48,48,48 --patch 32 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import Results, fmt, machine, markdown_table, progress, save_table
from bench_models import REFERENCE
from nmfseg.data.formats import load_case, open_dataset
from nmfseg.data.preprocess import nonzero_bbox
from nmfseg.fileio import read_json
from nmfseg.inference.ensemble import Ensemble
from nmfseg.inference.predict import predict_folder
from nmfseg.inference.predictor import Predictor
from nmfseg.models import create_model, list_models
from nmfseg.phantoms.synth import MANIFEST, PHANTOM_REVISION, synthesize_dataset

NAME = "bench_predict"


def configurations(
    model: str, onnx: bool = False, bf16: bool = False
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Label -> (registered network, settings of :class:`InferenceSettings`; ``engine``).

    Examples::

        >>> list(configurations("swin_factorizer_brats"))[2]
        'swin_factorizer_brats --nmf-iters 2'
        >>> list(configurations("swin_factorizer_brats", onnx=True).values())[-1]
        ('swin_factorizer_brats', {'engine': 'onnxruntime'})
        >>> list(configurations("swin_factorizer_brats", bf16=True))[-2:]
        ['segresnet_brats --amp bf16', 'swin_factorizer_brats --amp bf16']
    """
    configs = {
        REFERENCE: (REFERENCE, {}),
        model: (model, {}),
        f"{model} --nmf-iters 2": (model, {"nmf_iters": 2}),
        f"{model} --nmf-layers none": (model, {"nmf_layers": "none"}),
    }
    if bf16:
        configs[f"{REFERENCE} --amp bf16"] = (REFERENCE, {"amp": "bf16"})
        configs[f"{model} --amp bf16"] = (model, {"amp": "bf16"})
    if onnx:
        configs[f"{model} (onnxruntime)"] = (model, {"engine": "onnxruntime"})
    return configs


def synth_case(work: Path, shape: tuple[int, ...], spacing: float, seed: int) -> Path:
    """The cached one-case phantom dataset, generated on first use (or when stale)."""
    root = work / f"brats_{'x'.join(map(str, shape))}_{spacing:g}mm_seed{seed}"
    if (root / MANIFEST).is_file():
        manifest = read_json(root / MANIFEST)
        if manifest.get("complete") and manifest.get("revision") == PHANTOM_REVISION:
            return root
    print(f"generating the phantom case in {root} (once)", file=sys.stderr, flush=True)
    return synthesize_dataset(
        "brats", root, 1, seed=seed, spacing=spacing, shape=shape, overwrite=True, overview=0
    )


def build_predictor(model: str, settings: dict[str, Any], patch: int, overlap: float) -> Predictor:
    """An untrained, seeded network behind a Predictor with the benchmark's settings."""
    torch.manual_seed(0)
    net = create_model(model).eval()
    ensemble = Ensemble([net], [], (patch,) * 3, net.in_channels, net.out_channels)
    return Predictor(ensemble, overlap=overlap, sw_batch_size=1, blend="gaussian", **settings)


def build_onnx_predictor(model: str, patch: int, overlap: float, threads: int) -> Predictor:
    """The same untrained network as :func:`build_predictor`, exported and run by onnxruntime."""
    from bench_export import session
    from nmfseg.export.onnx import inference_metadata, network_to_onnx
    from nmfseg.export.runtime import OnnxNetwork

    plain = build_predictor(model, {}, patch, overlap)
    net = plain.networks[0]
    data, _ = network_to_onnx(net, torch.zeros(1, net.in_channels, *(patch,) * 3))
    meta = inference_metadata(plain, Path("untrained/checkpoint_final.pt"), "final")
    onnx_net = OnnxNetwork(session(data, threads), meta)
    ensemble = Ensemble(
        [onnx_net], [], (patch,) * 3, onnx_net.in_channels, onnx_net.out_channels,
        device=torch.device("cpu"),
    )  # fmt: skip
    return Predictor(ensemble, overlap=overlap, sw_batch_size=1, blend="gaussian")


def warm_up(predictor: Predictor) -> None:
    """One window through every network (allocator and kernel set-up)."""
    net = predictor.networks[0]
    with torch.inference_mode():
        net(torch.zeros(1, net.in_channels, *predictor.patch_size))


def report(records: list[dict[str, Any]], args: argparse.Namespace, case: str) -> str:
    """The Markdown report: machine, case, settings and one row per configuration."""
    ref = records[0]["s"]
    rows = [
        [r["configuration"], fmt(r["s"]), fmt(r["cpu_s"]), f"{r['s'] / ref:.2f}x", r["rounds"]]
        for r in records
    ]
    header = ["configuration", "time, s", "CPU time, s", "vs SegResNet", "rounds"]
    return "\n\n".join([
        "## Whole-volume prediction of one BraTS-sized case",
        f"Machine: {machine(args.threads)}.",
        f"Case: {case}. Predictor + predict_folder: read, crop, z-score, sliding window "
        f"({args.patch}³ windows, overlap {args.overlap:g}, Gaussian blending, sw_batch_size 1, "
        "no TTA), sigmoid, threshold, write the labels. Untrained seeded networks; ratios "
        f"against plain {REFERENCE}. Median over "
        f"{args.repeats} interleaved rounds after a one-window warm-up per network.",
        markdown_table(header, rows),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="240,240,155", help="case grid X,Y,Z")
    parser.add_argument("--spacing", type=float, default=1.0, help="voxel size, mm")
    parser.add_argument("--patch", type=int, default=128, help="sliding-window side")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--model", default="swin_factorizer_brats", help="the Factorizer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "nmfseg_bench_predict",
        help="cache of the phantom case and the predictions",
    )
    parser.add_argument("--out", type=Path, help="write NAME.md and NAME.csv")
    parser.add_argument("--fresh", action="store_true", help="do not reuse OUT/NAME.json")
    parser.add_argument(
        "--onnx", action="store_true", help="also the Factorizer exported, run by onnxruntime"
    )
    parser.add_argument("--bf16", action="store_true", help="also both networks under bf16")
    args = parser.parse_args(argv)

    if not re.fullmatch(r"\d+,\d+,\d+", args.shape.replace("x", ",")):
        parser.error(f"--shape must look like 240,240,155, got {args.shape!r}")
    shape = tuple(int(v) for v in args.shape.replace("x", ",").split(","))
    if args.model not in list_models():
        parser.error(f"unknown model {args.model!r}; see nmfseg.list_models()")
    torch.set_num_threads(args.threads)
    root = synth_case(args.work, shape, args.spacing, args.seed)
    image = load_case(open_dataset(root).cases[0]).image
    box = nonzero_bbox(image).cropped_shape
    case = f"{'×'.join(map(str, image.shape[1:]))} voxels × {image.shape[0]} channels, nonzero "
    case += f"box {'×'.join(map(str, box))} ({root})"
    del image

    configs = configurations(args.model, args.onnx, args.bf16)
    predictors = {}
    for label, (model, nmf) in configs.items():
        if nmf.get("engine") == "onnxruntime":
            predictor = build_onnx_predictor(model, args.patch, args.overlap, args.threads)
        else:
            predictor = build_predictor(model, nmf, args.patch, args.overlap)
        warm_up(predictor)
        predictors[label] = predictor
    settings = {k: getattr(args, k) for k in ("shape", "spacing", "patch", "overlap", "model")}
    store = Results(args.out, NAME, {**settings, "threads": args.threads}, args.fresh)
    if store.reused:
        print(f"reusing {store.reused} predictions timed in {store.path} (--fresh to redo them)")
    total, step = args.repeats * len(configs), 0
    for round_ in range(args.repeats):
        for label, predictor in predictors.items():
            step += 1
            key = f"{label}:{round_}"
            if store.get(key) is not None:
                continue
            progress(step, total, f"{label} (round {round_ + 1})")
            folder = args.work / "predictions" / re.sub(r"\W+", "_", label).strip("_")
            w0, c0 = time.perf_counter(), time.process_time()
            result = predict_folder(predictor, root, folder, overwrite=True, progress=False)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            if result.failed:
                raise SystemExit(f"{label}: prediction failed: {result.failed}")
            store.put(key, {"s": wall, "cpu_s": cpu})
    records = []
    for label, (model, nmf) in configs.items():
        runs = [store.get(f"{label}:{r}") for r in range(args.repeats)]
        records.append({
            "configuration": label,
            "model": model,
            **{k: nmf.get(k, "") for k in ("nmf_iters", "nmf_layers", "amp")},
            "s": statistics.median(r["s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "rounds": len(runs),
            "all_s": " ".join(f"{r['s']:.3f}" for r in runs),
        })  # fmt: skip
    save_table(args.out, NAME, report(records, args, case), records)


if __name__ == "__main__":
    main()
