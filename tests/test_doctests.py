"""Every ``Examples::`` block in the package's docstrings runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import nmfseg

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(nmfseg.__path__, "nmfseg.")
    if not m.name.endswith("__main__")  # importing it would run the CLI
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, report=True)
    assert result.failed == 0, f"{result.failed} failing example(s) in {name}"


@pytest.mark.parametrize("name", [m for m in MODULES if not m.startswith("nmfseg.cli")])
def test_every_public_function_and_class_is_documented(name: str) -> None:
    module = importlib.import_module(name)
    public = [getattr(module, n) for n in getattr(module, "__all__", [])]
    documented = [inspect.isfunction(o) or inspect.isclass(o) for o in public]
    missing = [o.__name__ for o, d in zip(public, documented, strict=True) if d and not o.__doc__]
    assert not missing, f"{name}: no docstring for {missing}"
    assert (module.__doc__ or "").strip(), f"{name} has no module docstring"
