"""Old public names (#23) still work for one release, each with a ``DeprecationWarning``
naming its new name."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from nmfseg.data.checks import SpacingSpread
from nmfseg.data.formats.base import Problem
from nmfseg.inference.ensemble import Ensemble
from nmfseg.inference.predictor import Predictor
from nmfseg.nmf import SWMatricize

MODULE_NAMES = [
    ("nmfseg.layers.args", "int_tuple", "ntuple"),
    ("nmfseg.nmf.windows", "view_to_windows", "partition_to_windows"),
    ("nmfseg.nmf.windows", "fold_view", "fold_partition"),
    ("nmfseg.nmf.windows", "is_view", "is_reshape"),
]


@pytest.mark.parametrize(("module", "old", "new"), MODULE_NAMES)
def test_an_old_module_name_is_the_new_one_with_a_warning(module, old, new):
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use {new}"):
        assert getattr(mod, old) is getattr(mod, new)
    assert old not in mod.__all__ and new in mod.__all__
    with pytest.raises(AttributeError):
        _ = mod.no_such_name


def test_old_method_and_attribute_names_give_what_the_new_ones_give():
    p = Predictor(Ensemble([torch.nn.Conv3d(1, 1, 1)], [], (8, 8, 8), 1, 1))
    with pytest.warns(DeprecationWarning, match="use Predictor.resolved_settings"):
        assert p.describe() == p.resolved_settings()
    problem = Problem("case1", Path("/data/case1/t1.nii.gz"), "is empty")
    with pytest.warns(DeprecationWarning, match="use Problem.message"):
        assert problem.describe(Path("/data")) == problem.message(Path("/data"))
    spread = SpacingSpread(((1.0, 1.0, 1.0),))
    with pytest.warns(DeprecationWarning, match="use SpacingSpread.summary"):
        assert spread.describe() == spread.summary()
    geometry = SWMatricize(head_dim=2, window_size=2).geometry((1, 4, 4, 4))
    with pytest.warns(DeprecationWarning, match="use MatricizeGeometry.partitions"):
        assert geometry.views == geometry.partitions == 2
