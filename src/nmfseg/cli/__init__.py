"""The ``nmfseg`` command line.

One verb per stage, nnU-Net style: ``check-data``, ``split``, ``synth``, ``train``,
``predict``, ``export``, ``nnunet-path``, ``nnunet-plans``, ``explain``, ``ablate``,
``postprocess-search``, ``evaluate``, ``compare``, ``study``, ``models``, ``complexity``,
``demo``. Each verb lives in its own
module under :mod:`nmfseg.cli` and defers its heavy imports (torch, MONAI) into the command
body so that ``nmfseg --help`` is instant.

Errors a user can cause are raised as :class:`nmfseg.errors.NmfsegError`; every command
is wrapped by :func:`nmfseg.cli._common.handle_errors`, which prints them as one line on
stderr with exit status 1.
"""

from __future__ import annotations

import importlib
import re

import typer
from typer.core import TyperCommand


class _Command(TyperCommand):
    """Usage lines as manual pages write them: ``DATA_DIR``, not typer's ``{DATA_DIR}``; a
    hidden argument (an old spelling, such as ``train``'s positional ``DATA_DIR``) left out."""

    def collect_usage_pieces(self, ctx):
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not getattr(param, "hidden", False):
                pieces.extend(param.get_usage_pieces(ctx))
        return [re.sub(r"^\{(.+)\}", r"\1", p) for p in pieces]


app = typer.Typer(
    name="nmfseg",
    help="Factorizer (NMF U-Net) segmentation: check data, train, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Modules that each define ``register(app)``; the order is the order in --help.
_COMMAND_MODULES = (
    "nmfseg.cli.data",
    "nmfseg.cli.synth",
    "nmfseg.cli.train",
    "nmfseg.cli.predict",
    "nmfseg.cli.export",
    "nmfseg.cli.nnunet",
    "nmfseg.cli.explain",
    "nmfseg.cli.ablate",
    "nmfseg.cli.postprocess",
    "nmfseg.cli.evaluate",
    "nmfseg.cli.study",
    "nmfseg.cli.complexity",
    "nmfseg.cli.demo",
)


def _version_callback(value: bool) -> None:
    if value:
        from nmfseg import __version__

        typer.echo(f"nmfseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """Factorizer (NMF U-Net) segmentation for BraTS, ISLES'22, MSD and nnU-Net folders."""


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)
for _info in app.registered_commands:
    if _info.cls in (None, TyperCommand):
        _info.cls = _Command


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``nmfseg`` script."""
    app(args=argv)
