"""The options every command that loads a trained model shares, written once.

The prediction settings (``--overlap`` ... ``--nmf-layers``, ``--postprocess``) are the fields
of :class:`~nmfseg.inference.settings.InferenceSettings`. A command takes the ones it needs
with :func:`with_settings` and receives them as one ``settings`` argument, checked there: a
bad value is one ``nmfseg: error: --overlap ...`` line before anything is loaded or written.
The training settings (``--steps`` ... ``--amp``) are declared once in
:mod:`nmfseg.training.options`; :func:`with_training_options` gives a command the ones it
takes, as one ``training`` argument.
``-r/--run``, ``-d/--data``, ``--checkpoint``, ``--device``, ``--quiet`` and the fold
options mean the same in every verb (the vocabulary: :mod:`nmfseg.cli._common`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import typer

from nmfseg.cli._common import one_of

F = TypeVar("F", bound=Callable[..., Any])

CHECKPOINT = typer.Option(
    "final", "--checkpoint", help="Which checkpoint of each fold: final, best or last."
)
DEVICE = typer.Option(None, "--device", help="cpu, cuda or cuda:N [cuda if available].")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")

RUN_HELP = (
    "Trained run: the run folder RUN_DIR/<dataset>/<model>, a fold folder, a checkpoint "
    "file, or the results root RUN_DIR when it holds one run."
)
DATA_HELP = "Labelled dataset folder in any supported format."


def run_option(help: str = RUN_HELP) -> Any:
    """``-r/--run RUN``, a trained run (required: checked by :func:`the_run`, as it has an
    old spelling)."""
    return typer.Option(None, "-r", "--run", metavar="RUN", help=f"{help}  [required]")


def data_option(help: str = DATA_HELP, metavar: str = "DATA_DIR") -> Any:
    """``-d/--data DATA_DIR``, a dataset folder (required: checked by :func:`the_data`)."""
    return typer.Option(None, "-d", "--data", metavar=metavar, help=f"{help}  [required]")


#: ``-m/--model``, hidden, where it named the trained run before ``-r/--run`` (predict,
#: explain, ablate, postprocess-search): old command lines keep working, and there it means
#: the run, as it did; a registered network's name is ``-m/--model`` only where a network is
#: built (train, complexity, demo, nnunet-plans).
OLD_RUN = typer.Option(None, "-m", "--model", metavar="RUN", hidden=True)
#: The positional ``DATA_DIR`` of check-data, split, train and study, hidden.
OLD_DATA_DIR = typer.Argument(None, metavar="DATA_DIR", hidden=True)


def the_run(run: Any, old: Any) -> Any:
    """The run of ``-r/--run`` or of its old spelling ``-m/--model``; one is required."""
    return one_of(run, old, "-r/--run", "-m/--model", required="the trained run")


def the_data(data: Any, old: Any, old_name: str = "DATA_DIR") -> Any:
    """The dataset of ``-d/--data`` or of its old spelling; one is required."""
    return one_of(data, old, "-d/--data", old_name, required="the dataset folder")


#: InferenceSettings field -> its option (the field's name is the parameter's).
SETTING_OPTIONS: dict[str, Any] = {
    "tta": typer.Option(
        False,
        "--tta",
        help="Average over every combination of flipped spatial axes: 8 in 3D, 4 in 2D "
        "(as many times slower).",
    ),
    "compile": typer.Option(
        False, "--compile", help="torch.compile the networks (pays off on many cases, GPU)."
    ),
    "overlap": typer.Option(
        None,
        "--overlap",
        metavar="FLOAT",
        help="Sliding-window overlap in [0, 1) [the run's validation.overlap, 0.5].",
    ),
    "sw_batch_size": typer.Option(
        None,
        "--sw-batch-size",
        metavar="INT",
        help="Windows per forward pass [the run's validation.sw_batch_size, 1].",
    ),
    "blend": typer.Option(
        None,
        "--blend",
        metavar="gaussian|constant",
        help="Window blending [the run's validation.mode, gaussian].",
    ),
    "threshold": typer.Option(
        None,
        "--threshold",
        metavar="FLOAT",
        help="Probability in (0, 1) at or above which a voxel is inside a region "
        "[the run's validation.threshold, 0.5].",
    ),
    "amp": typer.Option(
        None, "--amp", metavar="bf16|none", help="Mixed precision: bf16 or none [none]."
    ),
    "nmf_iters": typer.Option(
        None, "--nmf-iters", metavar="T", help="NMF iterations T >= 0 [as trained, 5]."
    ),
    "nmf_rank": typer.Option(
        None, "--nmf-rank", metavar="R", help="NMF rank R >= 1 [as trained, 1]."
    ),
    "nmf_solver": typer.Option(
        None, "--nmf-solver", metavar="hals|mu", help="NMF solver [as trained, hals]."
    ),
    "nmf_layers": typer.Option(
        None,
        "--nmf-layers",
        metavar="LAYERS",
        help="NMF layers that run, 0-based in network order (encoder, bridge, decoder): "
        "0-4, 0,3,8, all or none; the others are short-circuited [all].",
    ),
    "postprocess": typer.Option(
        None,
        "--postprocess",
        metavar="SPEC",
        help="Clean the region masks (repeatable): largest:REGION[,REGION] keeps the largest "
        "connected component, min-size:REGION=VOXELS removes smaller components (ET: the "
        "BraTS rule, they become necrosis), auto uses the run's postprocessing.json "
        "(nmfseg postprocess-search) [none, as the paper].",
    ),
}
_TYPES = {"tta": bool, "compile": bool, "postprocess": list[str]}
WINDOW = ("overlap", "sw_batch_size", "blend")
NMF = ("nmf_iters", "nmf_rank", "nmf_solver", "nmf_layers")


def with_settings(*names: str) -> Callable[[F], F]:
    """Give a command the prediction options ``names``, received as one ``settings`` argument.

    The command declares ``settings`` where the options belong in ``--help``; typer sees the
    options there instead (the wrapper's ``__signature__``), and the wrapper passes the
    :class:`~nmfseg.inference.settings.InferenceSettings` of the values given (an option not
    given keeps what the run was validated with).

    Raises:
        TypeError: A name is not a setting, or the command has no ``settings`` parameter.

    Examples::

        >>> @with_settings("overlap", "amp")
        ... def show(settings=None):
        ...     return settings.overlap, settings.amp
        >>> list(inspect.signature(show).parameters)
        ['overlap', 'amp']
        >>> show(overlap="0.25", amp=None)
        (0.25, 'none')
    """
    unknown = [n for n in names if n not in SETTING_OPTIONS]
    if unknown:
        raise TypeError(f"not a prediction setting: {', '.join(unknown)}")

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        if "settings" not in sig.parameters:
            raise TypeError(f"{fn.__name__} has no 'settings' parameter")
        options = [
            inspect.Parameter(
                n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=SETTING_OPTIONS[n], annotation=t
            )
            for n in names
            for t in [_TYPES.get(n, str)]
        ]
        params: list[inspect.Parameter] = []
        for p in sig.parameters.values():
            params.extend(options if p.name == "settings" else [p])

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from nmfseg.inference.settings import InferenceSettings

            given = {n: kwargs.pop(n, None) for n in names}
            given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
            kwargs["settings"] = InferenceSettings(
                **{k: v for k, v in given.items() if v not in (None, ())}
            )
            return fn(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        annotations = {k: v for k, v in fn.__annotations__.items() if k != "settings"}
        wrapper.__annotations__ = {**annotations, **{p.name: p.annotation for p in options}}
        return wrapper  # type: ignore[return-value]

    return decorate


def with_training_options(*keys: str) -> Callable[[F], F]:
    """Give a command the training options of ``keys`` (config keys of
    :data:`nmfseg.training.options.TRAIN_OPTIONS`; none: all of them), received as one
    ``training`` argument: the ``(TrainOption, text)`` pairs of the options given.

    The options, their help and their defaults are declared once, in the training package;
    the command declares ``training`` where they belong in ``--help``.

    Raises:
        TypeError: A key is not a training option, or the command has no ``training``
            parameter.

    Examples::

        >>> @with_training_options("steps", "optimizer.lr")
        ... def show(training=None):
        ...     return [(opt.option, text) for opt, text in training]
        >>> list(inspect.signature(show).parameters)
        ['steps', 'lr']
        >>> show(steps="500", lr=None)
        [('--steps', '500')]
    """
    from nmfseg.training.options import BY_KEY

    keys = keys or tuple(BY_KEY)
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        raise TypeError(f"not a training option: {', '.join(unknown)}")
    chosen = [BY_KEY[k] for k in keys]

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        if "training" not in sig.parameters:
            raise TypeError(f"{fn.__name__} has no 'training' parameter")
        options = [
            inspect.Parameter(
                o.parameter,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=typer.Option(None, o.option, metavar=o.metavar, help=o.help_text()),
                annotation=str,
            )
            for o in chosen
        ]
        params: list[inspect.Parameter] = []
        for p in sig.parameters.values():
            params.extend(options if p.name == "training" else [p])

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = [(o, kwargs.pop(o.parameter, None)) for o in chosen]
            kwargs["training"] = [(o, text) for o, text in given if text is not None]
            return fn(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        annotations = {k: v for k, v in fn.__annotations__.items() if k != "training"}
        wrapper.__annotations__ = {**annotations, **{p.name: str for p in options}}
        return wrapper  # type: ignore[return-value]

    return decorate


def parse_fold(fold: str | None, allow_all: bool = False) -> int | str | None:
    """The value of ``--fold K``: one fold of :func:`nmfseg.text.parse_folds` (a number, or
    ``"all"``, the ``fold_all`` model, where allowed), or None.

    Raises:
        ConfigError: Anything else.

    Examples::

        >>> parse_fold("2"), parse_fold(None), parse_fold("all", allow_all=True)
        (2, None, 'all')
    """
    from nmfseg.errors import ConfigError
    from nmfseg.text import parse_folds

    if fold is None:
        return None
    try:
        folds = parse_folds(fold, "--fold")
    except ConfigError:
        folds = []
    if len(folds) != 1 or (folds[0] == "all" and not allow_all):
        also = " or all" if allow_all else ""
        raise ConfigError(f"--fold {fold!r}: must be a fold number (0, 1, ...){also}")
    return folds[0]


def parse_folds(given: list[str], extra: list[str]) -> list[int | str]:
    """The folds of ``--folds`` (:func:`nmfseg.text.parse_folds`: ``--folds 0-2,4``,
    ``--folds all``); the older ``--folds 0 1 2`` arrives as ``["0"]`` plus the extra
    arguments ``["1", "2"]`` and is read as ``0,1,2``.

    Raises:
        ConfigError: Extra arguments without ``--folds``, or not a fold list.

    Examples::

        >>> parse_folds(["0-1"], ["3"]), parse_folds(["all"], []), parse_folds([], [])
        ([0, 1, 3], ['all'], [])
    """
    from nmfseg.errors import ConfigError
    from nmfseg.text import parse_folds as parse

    if extra and not given:
        raise ConfigError(f"unexpected argument {extra[0]!r}")
    return parse(" ".join([*given, *extra])) if given else []


@contextlib.contextmanager
def naming_model_args(given: Sequence[str]) -> Iterator[None]:
    """Inside: a network argument that does not exist, given as ``--model-arg [MODEL:]KEY=V``,
    is reported as ``--model-arg KEY: MODEL has no argument 'KEY'`` (train, study,
    nnunet-plans).

    Raises:
        ConfigError: That line.
    """
    from nmfseg.errors import ConfigError
    from nmfseg.models._registry import UnknownArgument

    keys = {text.partition("=")[0].rpartition(":")[2].strip() for text in given}
    try:
        yield
    except UnknownArgument as err:
        if err.argument not in keys:
            raise
        raise ConfigError(f"--model-arg {err.argument}: {err}") from None
