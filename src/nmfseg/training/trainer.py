"""The training loop: a plain PyTorch loop with validation, checkpoints, exact resume and DDP.

One step: a batch of random augmented patches (:mod:`nmfseg.training.data`), forward
(optionally under bf16 autocast), the deep-supervision Dice + BCE loss
(:mod:`nmfseg.training.losses`), backward, AdamW, then the LR schedule (linear warm-up
to ``lr``, then cosine to 0 at ``steps``); :class:`Trainer`'s hooks change any of these.
Every ``val_every`` steps and at the end the fold's validation cases are predicted whole
and scored with Dice per region (:mod:`nmfseg.training.validation`).

The fold folder ``OUT/<dataset>/<model>/fold_K/`` receives ``config.yaml``, ``log.csv``,
``progress.png``, ``checkpoint_last.pt`` / ``checkpoint_best.pt`` / ``checkpoint_final.pt``
and, at the end, ``validation/summary.json`` (per-case and mean Dice per region of the
final model).

**Exact resume.** All randomness is derived from the run seed: the patches and
augmentations of a step from ``(seed, sample index)`` and the network's own randomness
(dropout) from ``torch.manual_seed((seed, step, rank))`` reseeded before every step. A
checkpoint stores the model, optimizer, scheduler, step, log and RNG states, so a run
killed at any point (even ``SIGKILL``) and resumed with ``--resume`` ends with weights
identical to those of an uninterrupted run (bitwise on CPU; on GPU as far as the kernels
are deterministic, see ``deterministic: true``).

Examples::

    >>> import tempfile
    >>> from nmfseg.phantoms.toy import make_toy_dataset
    >>> from nmfseg.training.setup import prepare_run
    >>> from nmfseg.training.trainer import run_training
    >>> tmp = tempfile.mkdtemp()
    >>> data = make_toy_dataset(f"{tmp}/Toy", "isles22", n_cases=4, shape=(20, 20, 20))
    >>> run = prepare_run(data, "segresnet_brats", 0, f"{tmp}/runs", overrides={
    ...     "steps": 2, "patch_size": [16, 16, 16], "workers": 0, "n_folds": 2},
    ...     model_args={"init_filters": 8})
    >>> model = run_training(run, progress=False)
    >>> sorted(p.name for p in run.fold_dir.iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['checkpoint_best.pt', 'checkpoint_final.pt', 'checkpoint_last.pt', 'config.yaml',
     'log.csv', 'progress.png', 'validation']
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from nmfseg import __version__
from nmfseg.data.normalization import Preprocessing
from nmfseg.data.splits import save_splits
from nmfseg.errors import NmfsegError
from nmfseg.models.checkpoint import CHECKPOINT_FORMAT, read_checkpoint
from nmfseg.training.checkpoint import atomic_save, capture_rng_state, restore_rng_state
from nmfseg.training.config import save_config
from nmfseg.training.cores import share_cores_here, thread_change, worker_init
from nmfseg.training.data import TAG_STEP, PatchDataset, PreparedCase, derive_seed, prepare_case
from nmfseg.training.distributed import DistContext, init_distributed
from nmfseg.training.losses import DeepSupervisionLoss
from nmfseg.training.progress import plot_progress, write_log_csv
from nmfseg.training.schedule import WarmupCosine, adamw  # WarmupCosine also importable here
from nmfseg.training.setup import TrainingRun
from nmfseg.training.validation import mean_dice, score_cases, write_summary

__all__ = ["Trainer", "WarmupCosine", "run_training"]

# A run stops once this many optimizer steps in a row had NaN/Inf gradients.
_MAX_BAD_STEPS = 20


class Trainer:
    """nmfseg's training loop, with seams to change one part of the recipe (nnU-Net style).

    :func:`run_training` builds one per process and calls :meth:`fit`. Subclass it and
    override a hook; everything else (data, validation, checkpoints, exact resume, DDP,
    the skipped NaN steps) stays as it is:

    ========================== ==========================================================
    hook                       default (the paper's recipe)
    ========================== ==========================================================
    :meth:`build_network`      the run's network (``prepare_run`` built it from the registry)
    :meth:`build_loss`         soft Dice + BCE per region with deep supervision
    :meth:`configure_optimizers` AdamW, then linear warm-up and cosine, stepped every step
    :meth:`train_step`         forward (under ``amp``) and the loss of one batch
    :meth:`on_step_end`        nothing (called after every optimizer step)
    :meth:`on_validation_end`  nothing (called with every validation's log row)
    ========================== ==========================================================

    Examples::

        >>> from torch import nn
        >>> class L1Trainer(Trainer):  # the same run with another loss
        ...     def build_loss(self) -> nn.Module:
        ...         def l1(outputs, target):
        ...             out = outputs[0] if isinstance(outputs, list) else outputs
        ...             return (out.sigmoid() - target).abs().mean()
        ...         return l1
        >>> # run_training(prepare_run(...), trainer=L1Trainer)
    """

    def __init__(self, run: TrainingRun, ctx: DistContext, progress: bool) -> None:
        self.run, self.ctx, self.cfg = run, ctx, run.config
        self.progress = progress and ctx.is_main
        self.device = ctx.device
        self.total = int(self.cfg["steps"])
        self.patch = tuple(self.cfg["patch_size"])
        self.regions = list(self.cfg["dataset"]["regions"])
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None
        self.step = 0
        self.val_results: list[dict[str, Any]] | None = None
        self.val_step = -1
        self.bad_steps = 0  # consecutive optimizer steps skipped for NaN/Inf gradients
        self._created: list[Path] = []
        self.share = share_cores_here(self.device, self.cfg["workers"], ctx.world_size)
        self._callers_threads = torch.get_num_threads()  # fit() sets it again when it starts
        self.threads: int | None = None  # compute threads of the latest steps (checkpointed)

    # ------------------------------------------------------------------------ setup
    def _say(self, text: str) -> None:
        if self.ctx.is_main:
            print(f"nmfseg train: {text}", file=sys.stderr, flush=True)

    def _collective(self, fn: Any) -> Any:
        """Run ``fn`` on every rank; if it fails with a user error anywhere, fail everywhere."""
        error: str | None = None
        result = None
        try:
            result = fn()
        except NmfsegError as err:
            error = str(err)
        errors = [e for e in self.ctx.all_gather_object(error) if e]
        if errors:
            raise NmfsegError(errors[0])
        return result

    def _prepare_data(self) -> None:
        run, ctx = self.run, self.ctx
        cache = run.dataset_dir / "preprocessed"
        ids = list(dict.fromkeys(run.train_ids + run.val_ids))
        cases = [run.dataset.get(i) for i in ids]
        scheme = run.dataset.scheme
        mine = cases[ctx.rank :: ctx.world_size]
        pre = Preprocessing.from_config(self.cfg)  # validation reads the same cache entries

        def work() -> None:
            bar = tqdm(mine, desc="preprocessing", unit="case", disable=not self.progress)
            for case in bar:
                prepare_case(case, scheme, cache, pre)

        self._collective(work)
        prepared = {c.case_id: prepare_case(c, scheme, cache, pre) for c in cases}
        self.train_cases = [prepared[i] for i in run.train_ids]
        self.val_cases: list[PreparedCase] = [prepared[i] for i in run.val_ids]

    def _make_dirs(self) -> None:
        if not self.ctx.is_main:
            return
        fold_dir = self.run.fold_dir.absolute()
        top = next((p for p in (fold_dir, *fold_dir.parents) if p.parent.exists()), None)
        if top is not None and not top.exists():
            self._created.append(top)  # the outermost folder this run creates
        fold_dir.mkdir(parents=True, exist_ok=True)

    def _cleanup(self) -> None:
        """Remove what this invocation created (a failed setup leaves no partial output)."""
        for path in self._created:
            shutil.rmtree(path, ignore_errors=True)
        self._created.clear()

    # ------------------------------------------------------------------------ hooks
    def build_network(self) -> nn.Module:
        """The network to train (on the CPU; it is moved to the device afterwards)."""
        return self.run.model

    def build_loss(self) -> nn.Module:
        """The loss, called as ``loss(outputs, target)`` with the network's ``train()`` output
        (a list of deep-supervision logits, full resolution first) and the region masks."""
        return DeepSupervisionLoss.from_config(self.cfg["loss"])

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any]:
        """``(optimizer, scheduler)`` for :attr:`model`; the scheduler steps once per
        optimizer step (skipped steps included). Both are saved in checkpoints."""
        optimizer = adamw(self.model.parameters(), self.cfg["optimizer"])
        warmup = WarmupCosine(self.cfg["scheduler"]["warmup_steps"], self.total)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)

    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one batch (``{"image", "label"}`` on the CPU); backward and the
        optimizer step follow in the loop."""
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["label"].to(self.device, non_blocking=True).float()
        with self._autocast():
            outputs = self.net(x)
        return self.loss_fn(outputs, y)

    def on_step_end(self, step: int, loss: float) -> None:
        """Called after optimizer step ``step`` (1-based), before its log row and files."""

    def on_validation_end(self, row: dict[str, Any]) -> None:
        """Called with the log row of every validation (``val_dice``, ``val_dice_<region>``)."""

    # ------------------------------------------------------------------------ setup
    def _build(self) -> None:
        cfg = self.cfg
        model = self.build_network().to(self.device)
        self.model = model
        self.optimizer, self.scheduler = self.configure_optimizers()
        self.loss_fn = self.build_loss()
        if self.run.resume_from is not None:
            ckpt = read_checkpoint(self.run.resume_from)
            model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.step = int(ckpt["step"])
            self.history = list(ckpt.get("history", []))
            self.best = ckpt.get("best_metric")
            restore_rng_state(ckpt["rng"])  # each step reseeds anyway; kept for completeness
            self._say(f"resuming {self.run.fold_dir} at step {self.step}")
            self.threads = ckpt.get("threads")  # None: an nmfseg that did not record them
            line = thread_change(self.threads, torch.get_num_threads(), self._callers_threads)
            if self.device.type == "cpu" and self.step < self.total and line:
                self._say(line)
        if cfg["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        if cfg["grad_checkpointing"]:  # prepare_run checked the network supports it
            model.set_grad_checkpointing(True)
        net: Any = model
        if self.ctx.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)
        if cfg["compile"]:
            net = torch.compile(net)
        self.net = net

    def _loader(self) -> Any:
        per_rank = self.cfg["batch_size"] // self.ctx.world_size
        dataset = PatchDataset(
            self.train_cases,
            self.patch,
            self.cfg["augmentation"],
            seed=self.cfg["seed"],
            batch_size=self.cfg["batch_size"],
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            length=self.total * per_rank,
        )
        workers = self.share.workers
        return DataLoader(
            dataset,
            batch_size=per_rank,
            sampler=range(self.step * per_rank, self.total * per_rank),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init if workers else None,
            persistent_workers=False,
        )

    # ------------------------------------------------------------------------ state
    def _autocast(self) -> Any:
        if self.cfg["amp"] == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _checkpoint(self) -> dict[str, Any]:
        rng = capture_rng_state()
        rng["sampler"] = {"step": self.step, "seed": self.cfg["seed"]}
        return {
            "checkpoint_format": CHECKPOINT_FORMAT,
            "model_name": self.cfg["model"]["name"],
            "model_kwargs": self.cfg["model"]["kwargs"],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "rng": rng,
            "config": self.cfg,
            "scheme": self.cfg["dataset"]["scheme"]["name"],
            "nmfseg_version": __version__,
            "history": self.history,
            "best_metric": self.best,
            "threads": self.threads,  # bitwise resume needs the same count
        }

    def _save(self, *names: str) -> None:
        if self.ctx.is_main:
            state = self._checkpoint()
            for name in names:
                atomic_save(state, self.run.fold_dir / name)
        self.ctx.barrier()

    def _write_logs(self, plot: bool) -> None:
        if not self.ctx.is_main:
            return
        write_log_csv(self.history, self.run.fold_dir / "log.csv")
        if plot:
            cfg = self.cfg
            title = f"{cfg['model']['name']} - {cfg['dataset']['name']} fold {cfg['fold']}"
            plot_progress(self.history, self.run.fold_dir / "progress.png", title)

    # ------------------------------------------------------------------------ validation
    def _validate(self) -> dict[str, float]:
        mine = self.val_cases[self.ctx.rank :: self.ctx.world_size]
        validation = self.cfg["validation"]
        results = score_cases(
            self.model, mine, self.regions, self.patch, validation, self.device, self._autocast
        )
        self.model.train()
        gathered = [r for part in self.ctx.all_gather_object(results) for r in part]
        order = {c.case_id: i for i, c in enumerate(self.val_cases)}
        self.val_results = sorted(gathered, key=lambda r: order[r["case_id"]])
        self.val_step = self.step
        means = mean_dice(self.val_results, self.regions)
        row = {f"val_dice_{k}": v for k, v in means.items()}
        row["val_dice"] = float(np.mean(list(means.values())))
        self.on_validation_end(row)
        return row

    def _write_summary(self) -> None:
        if self.ctx.is_main and self.val_results is not None:
            path = self.run.fold_dir / "validation" / "summary.json"
            threshold = self.cfg["validation"]["threshold"]
            write_summary(path, self.val_results, self.regions, self.step, threshold)

    # ------------------------------------------------------------------------ loop
    def fit(self) -> nn.Module:
        """Train to the end on the compute threads of :attr:`share` (the caller's count
        again afterwards); the network in ``eval()`` mode."""
        self._callers_threads = torch.get_num_threads()
        with self.share.applied():
            return self._fit()

    def _fit(self) -> nn.Module:
        ctx, cfg = self.ctx, self.cfg
        # The first line says the split (e.g. "cpu: 1 compute thread + 1 data worker (2
        # cores)"): before the preprocessing bar, or without bars after the data are ready,
        # so that a bad dataset fails with its one error line.
        if self.progress:
            self._say(str(self.share))
        try:
            self._make_dirs()
            ctx.barrier()
            self._prepare_data()
        except NmfsegError:
            self._cleanup()
            raise
        if not self.progress:
            self._say(str(self.share))
        for note in self.run.notes:
            self._say(note)
        if ctx.is_main:
            if self.run.new_splits is not None and not self.run.splits_path.exists():
                save_splits(self.run.new_splits, self.run.splits_path)
            save_config(cfg, self.run.fold_dir / "config.yaml")
        self._build()
        t0 = time.perf_counter()
        time_offset = float(self.history[-1].get("time", 0.0)) if self.history else 0.0
        losses: list[float] = []
        if self.step < self.total:
            self._train_steps(t0, time_offset, losses)
        if self.val_results is None or self.val_step != self.total:
            row = self._validate()
            if self.history and self.history[-1]["step"] == self.total:
                self.history[-1].update(row)
        self._save("checkpoint_last.pt", "checkpoint_final.pt")
        self._write_logs(plot=True)
        self._write_summary()
        ctx.barrier()
        self.model.eval()
        return self.model

    def _train_steps(self, t0: float, time_offset: float, losses: list[float]) -> None:
        cfg, ctx = self.cfg, self.ctx
        bar = tqdm(
            total=self.total, initial=self.step, desc=f"fold {cfg['fold']}", unit="step",
            disable=not self.progress, dynamic_ncols=True, file=sys.stderr,
        )  # fmt: skip
        self.model.train()
        self.threads = torch.get_num_threads()
        batches = iter(self._loader())
        seed, rank = cfg["seed"], ctx.rank
        while self.step < self.total:
            batch = next(batches)
            torch.manual_seed(derive_seed(seed, TAG_STEP, self.step, rank))
            lr = self.scheduler.get_last_lr()[0]
            loss = self.train_step(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self._gradients_finite():
                self.optimizer.step()
            with warnings.catch_warnings():
                # After a skipped step torch warns that the schedule steps before the
                # optimizer; the schedule counts steps, so it is right to advance it.
                warnings.filterwarnings(
                    "ignore", "Detected call of `lr_scheduler.step", UserWarning
                )
                self.scheduler.step()
            self.step += 1
            losses.append(float(loss.detach()))
            self.on_step_end(self.step, losses[-1])
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", refresh=False)
            done = self.step
            validate = done % cfg["val_every"] == 0 or done == self.total
            checkpoint = done % cfg["checkpoint_every"] == 0 or done == self.total
            if done % cfg["log_every"] == 0 or validate or done == self.total:
                row: dict[str, Any] = {
                    "step": done,
                    "loss": ctx.mean(float(np.mean(losses))),
                    "lr": lr,
                    "time": round(time_offset + time.perf_counter() - t0, 3),
                }
                losses.clear()
                if validate:
                    row.update(self._validate())
                self.history.append(row)
                if validate and (self.best is None or row["val_dice"] > self.best):
                    self.best = row["val_dice"]
                    self._save("checkpoint_best.pt")
                self._write_logs(plot=validate or checkpoint)
            if checkpoint:
                self._save("checkpoint_last.pt")
        bar.close()

    def _gradients_finite(self) -> bool:
        """Clip (if configured) and check the gradient norm; skip the step if it is not finite.

        A NaN/Inf loss or gradient (a diverging run, an overflow in low precision) would
        otherwise poison the weights and AdamW's moments for good. The step is skipped
        instead, as a GradScaler does; the norm is that of the all-reduced gradients, so
        every DDP rank decides the same. After ``_MAX_BAD_STEPS`` skipped steps in a row the
        run stops with a one-line error (checkpoint_last.pt still holds the last good state).
        """
        clip = self.cfg["optimizer"]["grad_clip"]
        norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), float(clip) if clip else math.inf
        )
        if bool(torch.isfinite(norm)):
            self.bad_steps = 0
            return True
        self.bad_steps += 1
        if self.bad_steps == 1:
            self._say(f"step {self.step + 1}: non-finite loss or gradients; step skipped")
        if self.bad_steps >= _MAX_BAD_STEPS:
            raise NmfsegError(
                f"training diverged: loss or gradients were NaN/Inf for {self.bad_steps} steps "
                f"in a row (up to step {self.step + 1}); lower --lr, or set "
                "--set optimizer.grad_clip=1.0"
            )
        return False


def run_training(
    run: TrainingRun, progress: bool = True, trainer: type[Trainer] = Trainer
) -> nn.Module:
    """Train a prepared run (see :func:`nmfseg.training.setup.prepare_run`) to the end.

    Under ``torchrun`` every process calls this; they join one process group (DDP). On the
    CPU :meth:`Trainer.fit` computes on the threads of
    :func:`~nmfseg.training.cores.share_cores` (the cores less every data worker
    after the first, or ``OMP_NUM_THREADS``) and sets the caller's count back at the end.

    Args:
        run: the checked run.
        progress: show tqdm bars (rank 0 only).
        trainer: the loop: :class:`Trainer` or a subclass that overrides its hooks.

    Returns:
        The trained network (this process's replica) in ``eval()`` mode.
    """
    ctx = init_distributed(run.config["device"])
    try:
        return trainer(run, ctx, progress).fit()
    finally:
        ctx.close()
