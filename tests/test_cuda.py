"""The CUDA paths agree with the CPU: NMF core, every registered network, bf16 autocast,
torch.compile, and the pipeline (train, predict, evaluate) with ``--device cuda``.

Skipped where no GPU is visible (CI); run with ``pytest tests/test_cuda.py`` on a GPU machine.
``NMFSEG_TEST_DEVICE=cpu`` runs the same comparisons CPU against CPU, to check the tests
themselves on a machine without a GPU.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nmfseg.cli import app
from nmfseg.data.formats import open_dataset
from nmfseg.data.nifti import read_nifti
from nmfseg.models import create_model, list_models
from nmfseg.nmf import nmf
from nmfseg.phantoms.toy import make_toy_dataset

DEV = os.environ.get("NMFSEG_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEV == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"
)

SMALL = {"segresnet_brats": dict(init_filters=8)}
SMALL_FACTORIZER = dict(channels=(8, 16, 32, 64, 128))


def _small(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, **{**SMALL.get(name, SMALL_FACTORIZER), **kwargs})


@pytest.fixture(autouse=True)
def _no_tf32():
    """Plain fp32 matmuls/convs on the GPU, so agreement with the CPU is tight."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("rank", [1, 3])
def test_nmf_cuda_matches_cpu_in_float64(solver, rank):
    g = torch.Generator().manual_seed(rank)
    x = torch.rand(3, 37, 50, generator=g, dtype=torch.float64)
    xs = (x.clone().requires_grad_(), x.to(DEV).requires_grad_())
    outs = [nmf(xi, rank=rank, iters=6, solver=solver) for xi in xs]
    for a, b in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-11)
    grads = []
    for xi, (u, v) in zip(xs, outs, strict=True):
        ((u @ v.mT) ** 2).sum().backward()
        grads.append(xi.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", [*list_models("*_brats"), "segresnet_brats"])
def test_model_cuda_matches_cpu_forward_and_gradients(name):
    """float64 on both devices: differences are kernel bugs, not rounding."""
    model = _small(name, dropout=0.0).double()
    x = torch.randn(1, model.in_channels, 35, 29, 33, dtype=torch.float64)
    gpu = _small(name, dropout=0.0).double().to(DEV)
    gpu.load_state_dict(model.state_dict())
    for m in (model, gpu):
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.to(DEV)).cpu(), model(x), rtol=1e-7, atol=1e-8)
    model.train(), gpu.train()
    losses = []
    for m, xi in ((model, x), (gpu, x.to(DEV))):
        outs = m(xi)
        outs = outs if isinstance(outs, list) else [outs]
        loss = sum(o.square().mean() for o in outs)
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-9)
    for (pname, p), q in zip(model.named_parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-6, atol=1e-9, msg=pname)


@pytest.mark.parametrize("name", ["swin_factorizer_brats", "segresnet_brats"])
def test_bf16_autocast_on_cuda_is_finite_and_close_to_fp32(name):
    model = _small(name).to(DEV).eval()
    x = torch.randn(2, model.in_channels, 48, 40, 44, device=DEV)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast(DEV, dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low).all()
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05, f"bf16 relative error {rel:.3g}"
    model.train()
    with torch.autocast(DEV, dtype=torch.bfloat16):
        outs = model(x)
    outs = outs if isinstance(outs, list) else [outs]
    sum(o.float().square().mean() for o in outs).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_compiled_swin_factorizer_matches_eager_on_cuda():
    model = _small("swin_factorizer_brats").to(DEV).eval()
    x = torch.randn(1, 4, 32, 32, 32, device=DEV)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model)(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_pipeline_train_predict_evaluate_with_device_cuda_and_bf16(tmp_path):
    runner = CliRunner()
    data = make_toy_dataset(tmp_path / "Toy", "msd_brats", n_cases=4, shape=(21, 19, 23), seed=1)
    out = tmp_path / "runs"
    result = runner.invoke(app, [
        "train", str(data), "--model", "swin_factorizer_isles", "--fold", "0", "--out", str(out),
        "--steps", "6", "--patch-size", "16", "--n-folds", "2", "--workers", "0",
        "--val-every", "3", "--log-every", "1", "--model-arg", "channels=4,8,16,32,64",
        "--device", DEV, "--amp", "bf16", "--quiet",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    fold = out / data.name / "swin_factorizer_isles" / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 6
    pred = tmp_path / "pred"
    result = runner.invoke(
        app, ["predict", "-m", str(fold), "-i", str(data), "-o", str(pred), "--device", DEV]
    )
    assert result.exit_code == 0, result.output
    ds = open_dataset(data)
    for case in ds.cases:
        out_arr, out_img = read_nifti(pred / f"{case.case_id}.nii.gz")
        ref_arr, ref_img = read_nifti(case.label_path)
        assert out_arr.shape == ref_arr.shape
        assert np.allclose(out_img.affine, ref_img.affine)
    ev = tmp_path / "ev"
    result = runner.invoke(app, ["evaluate", "--pred", str(pred), "--gt", str(data), "-o", str(ev)])
    assert result.exit_code == 0, result.output
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n_cases"] == len(ds.cases)
