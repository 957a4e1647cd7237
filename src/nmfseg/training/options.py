"""The training settings that commands take as options of their own, declared once.

``nmfseg train`` and ``nmfseg study`` take the common training settings as options
(``--steps``, ``--lr``, ...); everything else is ``--set KEY=VALUE``. Each option is one
:class:`TrainOption` in :data:`TRAIN_OPTIONS`: the config key it sets, its name, metavar and
help, with the default shown read from the packaged recipe (``configs/default.yaml``), never
restated. The CLI builds its options from this table
(:func:`nmfseg.cli._options.with_training_options`), and ``nmfseg study`` writes its job lines
with the same names.

Examples::

    >>> BY_OPTION["--lr"].key, BY_KEY["optimizer.lr"].option
    ('optimizer.lr', '--lr')
    >>> BY_KEY["steps"].help_text()
    'Optimizer steps [100000].'
    >>> BY_KEY["amp"].parse("none"), BY_KEY["patch_size"].parse("96,96,64")
    (None, [96, 96, 64])
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from nmfseg.training.config import load_recipe, parse_value

__all__ = ["BY_KEY", "BY_OPTION", "TRAIN_OPTIONS", "TrainOption", "training_overrides"]


@cache
def _defaults() -> dict[str, Any]:
    return load_recipe("default")


@dataclass(frozen=True)
class TrainOption:
    """One training setting as a command-line option.

    Attributes:
        key: The config key it sets (dotted for nested sections).
        option: The option's name (``--steps``).
        metavar: What ``--help`` shows for its value.
        help: What it does; the default is appended from the packaged recipe unless
            ``default`` says it (a text) or the help ends with one (``[...]``).
        default: The default as shown, when the recipe's value does not say it.
    """

    key: str
    option: str
    metavar: str
    help: str
    default: str | None = None

    @property
    def parameter(self) -> str:
        """The name of the command's parameter (``--weight-decay`` -> ``weight_decay``)."""
        return self.option.lstrip("-").replace("-", "_")

    def help_text(self) -> str:
        """The help with its default, e.g. ``Optimizer steps [100000].``"""
        if self.default is not None:
            return f"{self.help} [{self.default}]."
        node: Any = _defaults()
        for part in self.key.split("."):
            node = node[part]
        shown = "none" if node is None else node
        return f"{self.help} [{shown}]."

    def parse(self, text: str) -> Any:
        """The config value of the option's text (a device stays text; ``none`` precision is
        ``None``); a bad value is left to the config's rules, which name the option."""
        if self.key == "device":
            return text
        value = parse_value(text, self.option)
        if self.key == "amp" and value in ("none", "None", None, False):
            return None
        return value


#: Every training setting that is an option of its own, in ``--help`` order.
TRAIN_OPTIONS: tuple[TrainOption, ...] = (
    TrainOption("steps", "--steps", "INT", "Optimizer steps"),
    TrainOption("patch_size", "--patch-size", "INT[,INT,INT]",
                "Patch size (one size: a cube, a square for a 2D network)",
                "the preset's: 128 BraTS, 64 ISLES, 512x512 2D"),
    TrainOption("batch_size", "--batch-size", "INT",
                "Global batch size, split over DDP processes; 1 needs about half the memory"),
    TrainOption("optimizer.lr", "--lr", "FLOAT", "AdamW learning rate"),
    TrainOption("optimizer.weight_decay", "--weight-decay", "FLOAT", "AdamW weight decay"),
    TrainOption("scheduler.warmup_steps", "--warmup-steps", "INT",
                "Linear warm-up steps before cosine"),
    TrainOption("val_every", "--val-every", "INT", "Validate every N steps (and at the end)"),
    TrainOption("checkpoint_every", "--checkpoint-every", "INT",
                "Write checkpoint_last.pt every N steps"),
    TrainOption("log_every", "--log-every", "INT", "Log every N steps"),
    TrainOption("seed", "--seed", "INT", "Random seed"),
    TrainOption("workers", "--workers", "INT", "DataLoader workers per process",
                "on the CPU one per 4 cores, at least 1; on CUDA one per core; at most 4"),
    TrainOption("n_folds", "--n-folds", "INT", "Folds when splits.json is created"),
    TrainOption("device", "--device", "DEVICE", "cpu, cuda or cuda:N", "cuda if available"),
    TrainOption("amp", "--amp", "bf16|none", "Mixed precision: bf16 or none"),
)  # fmt: skip
BY_OPTION: dict[str, TrainOption] = {o.option: o for o in TRAIN_OPTIONS}
BY_KEY: dict[str, TrainOption] = {o.key: o for o in TRAIN_OPTIONS}


def training_overrides(
    given: list[tuple[TrainOption, str]],
) -> tuple[dict[str, Any], dict[str, str]]:
    """``(overrides, sources)`` of the options given: config key -> value, and config key ->
    the option that set it (so that a bad value's message names the option).

    Examples::

        >>> training_overrides([(BY_KEY["steps"], "500"), (BY_KEY["amp"], "bf16")])
        ({'steps': 500, 'amp': 'bf16'}, {'steps': '--steps', 'amp': '--amp'})
    """
    overrides = {opt.key: opt.parse(text) for opt, text in given}
    return overrides, {opt.key: opt.option for opt, _ in given}
