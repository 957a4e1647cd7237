"""Every ``Examples::`` block in the package's docstrings runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
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


def test_the_package_has_examples() -> None:
    finder = doctest.DocTestFinder()
    total = sum(
        len(t.examples) for name in MODULES for t in finder.find(importlib.import_module(name))
    )
    assert total > 100
