"""``nmfseg nnunet-path`` and ``nmfseg nnunet-plans``: nmfseg networks inside nnU-Net v2.

The trainers themselves are :mod:`nmfseg.nnunet.trainers`; these verbs tell nnU-Net where
they are and write plans for any registered network. Both need ``pip install
'nmfseg[nnunet]'`` and say so in one line without it.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import typer

from nmfseg.cli._common import handle_errors, key_value
from nmfseg.cli._options import data_option, naming_model_args, the_data

PATH_HELP = (
    "Print the folder that holds nmfseg's nnU-Net trainers, for nnU-Net's nnUNet_extTrainer:\n\n"
    "export nnUNet_extTrainer=$(nmfseg nnunet-path)\n\n"
    "nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerSwinFactorizer (also "
    "nnUNetTrainerGlobalFactorizer, nnUNetTrainerLocalFactorizer, nnUNetTrainerNmfseg with "
    "plans from nmfseg nnunet-plans, and each with _AdamWCosine for the paper's optimizer). "
    "--check verifies that nnU-Net finds them from this shell."
)
PLANS_HELP = (
    "Write nnU-Net plans that build any registered nmfseg network (train them with -tr "
    "nnUNetTrainerNmfseg -p NAME). The source plans are copied with the architecture replaced "
    "and the patch rounded to the network's size multiple; the preprocessed data is shared."
)


def nnunet_path(
    check: bool = typer.Option(
        False, "--check", help="Exit 1 unless nnUNet_extTrainer lets nnU-Net find the trainers."
    ),
) -> None:
    """Print the folder to put in nnUNet_extTrainer."""
    from nmfseg.errors import ConfigError
    from nmfseg.nnunet import require_nnunet, trainer_folder

    require_nnunet()
    folder = trainer_folder()
    if check:
        value = os.environ.get("nnUNet_extTrainer", "")  # noqa: SIM112 (nnU-Net's name)
        listed = [p for p in value.split(os.pathsep) if p]
        if not any(Path(p).resolve() == folder for p in listed if Path(p).exists()):
            raise ConfigError(
                "nnUNet_extTrainer does not list nmfseg's trainer folder; run: export "
                f"nnUNet_extTrainer={folder}"
            )
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        from nmfseg.nnunet.trainers import nnUNetTrainerSwinFactorizer

        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            found = recursive_find_trainer_class_by_name("nnUNetTrainerSwinFactorizer")
        if found is not nnUNetTrainerSwinFactorizer:
            raise ConfigError(f"nnU-Net found another nnUNetTrainerSwinFactorizer: {found}")
    typer.echo(str(folder))


def nnunet_plans(
    old_data: str = typer.Argument(None, metavar="DATASET", hidden=True),  # before -d/--data
    data: str = data_option(
        "Preprocessed dataset: id or name under $nnUNet_preprocessed (nnU-Net's -d), or its "
        "folder.",
        metavar="DATASET",
    ),
    model: str = typer.Option(
        ..., "-m", "--model", metavar="NAME", help="Registered network (nmfseg models)."
    ),
    model_arg: list[str] = typer.Option(
        None,
        "--model-arg",
        metavar="KEY=VALUE",
        help="Override a network argument (repeatable), e.g. --model-arg channels=8,16,32,64,128.",
    ),
    source: str = typer.Option("nnUNetPlans", "-p", "--plans", help="Plans to start from."),
    name: str = typer.Option(None, "--name", help="New plans name [PLANS_MODEL]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a plans file of that name."),
) -> None:
    """Write nnU-Net plans for a registered nmfseg network."""
    from nmfseg.models import model_info
    from nmfseg.nnunet import require_nnunet, write_plans_variant

    dataset = the_data(data, old_data, "DATASET")
    require_nnunet()
    model_info(model)  # an unknown name fails here, listing the registered ones
    overrides = dict(key_value(item, "--model-arg") for item in model_arg or [])
    with naming_model_args(model_arg or []):
        path = write_plans_variant(
            dataset, model, overrides, source=source, name=name, overwrite=overwrite
        )
    plans = path.stem
    typer.echo(f"wrote {path}", err=True)
    typer.echo(
        f"train: nnUNetv2_train {path.parent.name} 3d_fullres FOLD -tr nnUNetTrainerNmfseg "
        f"-p {plans}",
        err=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``nmfseg nnunet-path`` and ``nmfseg nnunet-plans`` to app."""
    app.command("nnunet-path", help=PATH_HELP)(handle_errors(nnunet_path))
    app.command("nnunet-plans", help=PLANS_HELP)(handle_errors(nnunet_plans))
