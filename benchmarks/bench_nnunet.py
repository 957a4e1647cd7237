"""Benchmark: one training iteration of the same network inside nnU-Net and in ``nmfseg train``.

Both runs train the same network (``--model``, at ``--channels``), with the same patch and
batch, on the same phantoms (BraTS-like, ``nmfseg synth brats --format nnunet``), on the CPU,
one after the other, each as a user runs it:

- **nnU-Net**: ``nnUNetv2_plan_and_preprocess``, then the nmfseg trainer in-process
  (``nnUNetTrainerNmfseg`` on plans from :func:`nmfseg.nnunet.write_plans_variant` with the
  patch and batch forced), nnU-Net's own data loading and augmentation in its background
  workers (``nnUNet_n_proc_DA``, default: the cores), its loss, SGD and gradient clipping;
  the time of each ``train_step(next(dataloader))``.
- **nmfseg**: ``nmfseg train`` on the raw dataset with ``--log-every 1``, its compute
  threads fixed to ``--threads`` (``OMP_NUM_THREADS``) and its DataLoader workers by its
  default (:func:`nmfseg.training.cores.share_cores`: on the CPU one per 4 cores, none below
  4), AdamW; the time between consecutive log rows.

Both take the median over ``--steps`` iterations after ``--warmup`` ones. Also printed: the
network step alone (forward, loss, backward, optimizer step on one fixed batch) in each
framework, so a difference in the data pipeline shows apart from one in the network path;
and what nnU-Net's planner chose for the phantoms (spacing, patch, batch, normalization).

Usage::

    python benchmarks/bench_nnunet.py                          # Swin Factorizer, 64^3, batch 2
    python benchmarks/bench_nnunet.py --patch 96 --batch 1 --channels 16,32,64,128,256
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_model, environment

BIN = Path(sys.executable).parent


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def _network_step(step, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def nnunet_iterations(root: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """Time nnU-Net's iterations in this process (the environment is already set)."""
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nmfseg.fileio import read_json

    pre = root / "preprocessed" / "Dataset501_Phantoms"
    plans = read_json(pre / "nnUNetPlans_bench.json")
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerNmfseg")
    trainer = cls(
        dict(plans, continue_training=False),
        "3d_fullres",
        0,
        read_json(pre / "dataset.json"),
        torch.device("cpu"),
    )
    torch.set_num_threads(args.threads)
    trainer.on_train_start()
    trainer.network.train()
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        trainer.train_step(next(trainer.dataloader_train))
        times.append(time.perf_counter() - start)
    batch = next(trainer.dataloader_train)
    alone = _network_step(lambda: trainer.train_step(batch), args.steps)
    return {"iteration": statistics.median(times[args.warmup :]), "network step": alone}


def nmfseg_iterations(raw: Path, root: Path, args: argparse.Namespace, env: dict) -> dict:
    out = root / "nmfseg_runs"
    steps = args.warmup + args.steps
    _run(
        [str(BIN / "nmfseg"), "train", str(raw), "-m", args.model, "--fold", "0",
         "-o", str(out), "--steps", str(steps), "--patch-size", str(args.patch),
         "--batch-size", str(args.batch), "--log-every", "1", "--val-every", str(10 * steps),
         "--checkpoint-every", str(10 * steps), "--device", "cpu", "--quiet",
         "--model-arg", f"channels={args.channels}"],
        env,
    )  # fmt: skip
    log = next(out.rglob("log.csv")).read_text().splitlines()
    t = [float(line.split(",")[3]) for line in log[1:]]
    diffs = [b - a for a, b in itertools.pairwise(t)][args.warmup - 1 :]
    return {"iteration": statistics.median(diffs), "network step": nmfseg_network_step(args)}


def nmfseg_network_step(args: argparse.Namespace) -> float:
    import torch

    from nmfseg.models import create_model
    from nmfseg.training.config import load_recipe
    from nmfseg.training.losses import DeepSupervisionLoss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    channels = [int(c) for c in args.channels.split(",")]
    net = create_model(args.model, channels=channels).train()
    recipe = load_recipe("default")
    loss_fn = DeepSupervisionLoss(recipe["loss"]["ds_weights"], recipe["loss"]["dice_eps"])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(args.batch, net.in_channels, *(args.patch,) * 3)
    y = (torch.rand(args.batch, net.out_channels, *(args.patch,) * 3) > 0.7).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    return _network_step(step, args.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="swin_factorizer_brats")
    parser.add_argument("--channels", default="16,32,64,128,256")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="Keep the files here.")
    args = parser.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="bench_nnunet_"))
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(args.threads)  # nmfseg train's compute threads
    for name in ("raw", "preprocessed", "results"):
        env[f"nnUNet_{name}"] = str(root / name)
        (root / name).mkdir(exist_ok=True)
    env["nnUNet_extTrainer"] = _run([str(BIN / "nmfseg"), "nnunet-path"], env).strip()
    raw = root / "raw" / "Dataset501_Phantoms"
    if not raw.exists():
        synth = [str(BIN / "nmfseg"), "synth", "brats", "-o", str(raw), "--format", "nnunet"]
        _run([*synth, "-n", str(args.cases), "--spacing", str(args.spacing), "--no-progress"], env)
    pre = root / "preprocessed" / "Dataset501_Phantoms"
    if not (pre / "nnUNetPlans.json").exists():
        _run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", "501", "-c", "3d_fullres",
              "-np", "2"], env)  # fmt: skip
    from nmfseg.fileio import read_json, write_json
    from nmfseg.nnunet import write_plans_variant

    planned = read_json(pre / "nnUNetPlans.json")["configurations"]["3d_fullres"]
    channels = [int(c) for c in args.channels.split(",")]
    path = write_plans_variant(
        pre, args.model, {"channels": channels}, name="nnUNetPlans_bench", overwrite=True
    )
    plans = read_json(path)
    forced = copy.deepcopy(plans)
    forced["configurations"]["3d_fullres"] |= {
        "patch_size": [args.patch] * 3,
        "batch_size": args.batch,
    }
    write_json(path, forced)
    os.environ.update({k: env[k] for k in env if k.startswith("nnUNet")})
    import torch

    print(f"{cpu_model()}, torch {torch.__version__}, {args.threads} threads ({environment()})")
    print(
        f"nnU-Net's plan for the phantoms ({args.cases} cases, {args.spacing} mm): spacing "
        f"{planned['spacing']}, patch {planned['patch_size']}, batch {planned['batch_size']}, "
        f"median shape {planned['median_image_size_in_voxels']}, normalization "
        f"{sorted(set(planned['normalization_schemes']))} (mask {planned['use_mask_for_norm']})"
    )
    rows = {
        "nmfseg train": nmfseg_iterations(raw, root, args, env),
        "nnU-Net": nnunet_iterations(root, args, env),
    }
    print(
        f"\n{args.model} at channels {args.channels}, patch {args.patch}^3, batch {args.batch}, "
        f"CPU, {args.threads} threads; median of {args.steps} after {args.warmup}"
    )
    print(f"{'':<14}{'iteration (s)':>15}{'network step (s)':>18}")
    for name, row in rows.items():
        print(f"{name:<14}{row['iteration']:>15.3f}{row['network step']:>18.3f}")
    ratio = rows["nnU-Net"]["iteration"] / rows["nmfseg train"]["iteration"]
    print(f"nnU-Net / nmfseg train, per iteration: {ratio:.2f}x")


if __name__ == "__main__":
    main()
