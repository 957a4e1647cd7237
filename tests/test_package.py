"""The package's public surface: every exported name resolves in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

import nmfseg

pytestmark = pytest.mark.slow  # fresh interpreters / processes


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("name", nmfseg.__all__)
def test_every_exported_name_resolves_in_a_fresh_interpreter(name):
    result = _fresh(f"import nmfseg; print(type(nmfseg.{name}).__name__)")
    assert result.returncode == 0, result.stderr


def test_nmfseg_nmf_is_the_nmf_core_package_everywhere():
    code = (
        "import nmfseg, types\n"
        "assert isinstance(nmfseg.nmf, types.ModuleType)\n"
        "import nmfseg.models\n"
        "assert isinstance(nmfseg.nmf, types.ModuleType)\n"
        "from nmfseg.nmf import NMF, nmf\n"
        "assert callable(nmf) and nmfseg.NMF is NMF\n"
    )
    result = _fresh(code)
    assert result.returncode == 0, result.stderr


def test_import_nmfseg_does_not_import_torch():
    result = _fresh("import sys, nmfseg; print('torch' in sys.modules)")
    assert result.stdout.strip() == "False", result.stderr


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nmfseg.nope  # noqa: B018
