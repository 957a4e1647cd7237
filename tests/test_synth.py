"""Phantom generator (nmfseg.phantoms.synth*) and the ``nmfseg synth`` command.

Everything runs at 4 mm (about 50 x 59 x 48 voxels), where a case takes a fraction of a
second; the anatomy is the real nilearn MNI152 template at that spacing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from nmfseg.cli import app
from nmfseg.data.formats import load_case, open_dataset
from nmfseg.data.schemes import SCHEMES, labels_to_regions
from nmfseg.phantoms.anatomy import load_anatomy
from nmfseg.phantoms.brats import BRATS_REGIONS, ED, ET, NCR, mass_effect
from nmfseg.phantoms.synth import (
    KINDS,
    MANIFEST,
    PHANTOM_REVISION,
    case_id_for,
    synth_brats_case,
    synth_isles_case,
    synthesize_dataset,
    to_scheme_labels,
)

SP = 4.0
BRATS_SEEDS = [(3, i) for i in range(12)]
ISLES_SEEDS = [(5, i) for i in range(6)]
runner = CliRunner()


@pytest.fixture(scope="module")
def brats_cases():
    return [synth_brats_case(s, spacing=SP) for s in BRATS_SEEDS]


@pytest.fixture(scope="module")
def isles_cases():
    return [synth_isles_case(s, spacing=SP) for s in ISLES_SEEDS]


def _normal_brain(case):
    """Voxels inside the brain (skull-stripped images are 0 outside) without lesion."""
    return (case.image[0] > 0) & (case.label == 0)


def _best_threshold_dice(x: np.ndarray, mask: np.ndarray) -> float:
    """The best Dice any single threshold (either direction) of x reaches for mask."""
    best = 0.0
    for t in np.quantile(x, np.linspace(0.002, 0.998, 250)):
        for pred in (x > t, x < t):
            best = max(best, 2.0 * (pred & mask).sum() / (pred.sum() + mask.sum()))
    return best


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("make", [synth_brats_case, synth_isles_case])
def test_same_seed_gives_identical_bytes_and_other_seeds_differ(make):
    a, b = make((7, 2), spacing=SP), make((7, 2), spacing=SP)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.label.tobytes() == b.label.tobytes()
    assert np.array_equal(a.affine, b.affine)
    for other in ((7, 3), (8, 2)):
        c = make(other, spacing=SP)
        assert not np.array_equal(a.image, c.image)


def test_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="nonnegative"):
        synth_brats_case(-1, spacing=SP)


# --------------------------------------------------------------------------- BraTS phantoms


def test_brats_shapes_brain_and_tumour(brats_cases):
    anat = load_anatomy(SP)
    for case in brats_cases:
        assert case.image.shape == (4, *anat.shape) and case.image.dtype == np.float32
        assert case.label.shape == anat.shape and case.label.dtype == np.uint8
        assert np.array_equal(case.affine, anat.affine)
        assert set(np.unique(case.label)) <= {0, NCR, ED, ET}
        assert np.isfinite(case.image).all() and (case.image >= 0).all()
        # Skull stripped with one mask: the same voxels are zero in every channel.
        zero = case.image == 0
        assert (zero == zero[0]).all()
        brain = ~zero[0]
        assert 0.1 < brain.mean() < 0.6
        # A tumour of plausible size, inside the brain.
        wt_ml = (case.label > 0).sum() * SP**3 / 1000
        assert 3.0 < wt_ml < 400.0, wt_ml
        assert brain[case.label > 0].all()
        # Channels are different images, not copies or rescalings of one another.
        flat = case.image[:, brain]
        corr = np.corrcoef(flat)
        assert np.abs(corr[np.triu_indices(4, 1)]).max() < 0.98


def test_brats_region_nesting_and_variety(brats_cases):
    has_ncr = [bool((c.label == NCR).any()) for c in brats_cases]
    has_et = [bool((c.label == ET).any()) for c in brats_cases]
    for case in brats_cases:
        et, tc, wt = (np.isin(case.label, BRATS_REGIONS[r]) for r in ("ET", "TC", "WT"))
        assert not (et & ~tc).any() and not (tc & ~wt).any()
        assert tc.any() and (wt & ~tc).any()  # a core and edema around it
    assert any(n and e for n, e in zip(has_ncr, has_et, strict=True))  # rim around necrosis
    assert not all(has_ncr) or not all(has_et)  # some without necrosis or enhancement


def test_brats_contrasts(brats_cases):
    flair_ed, t1_tc, t2_ed, gd_et, gd_ncr = [], [], [], [], []
    for case in brats_cases:
        flair, t1, t1gd, t2 = case.image
        ref = _normal_brain(case)
        med = [float(np.median(ch[ref])) for ch in case.image]
        flair_ed.append(flair[case.label == ED].mean() / med[0])
        t2_ed.append(t2[case.label == ED].mean() / med[3])
        t1_tc.append(t1[np.isin(case.label, (NCR, ET))].mean() / med[1])
        if (case.label == ET).any() and (case.label == NCR).any():
            gd_et.append(t1gd[case.label == ET].mean() / med[2])
            gd_ncr.append(t1gd[case.label == NCR].mean() / med[2])
    assert np.mean(flair_ed) > 1.3  # edema bright on FLAIR
    assert np.mean(t2_ed) > 1.2  # and on T2
    assert np.mean(t1_tc) < 0.8  # tumour core dark on T1
    # The rim enhances, the necrosis it surrounds does not (at 4 mm partial volume with the
    # rim brightens the small necrotic centres, hence the loose bound on NCR).
    assert len(gd_et) >= 3 and all(e > n for e, n in zip(gd_et, gd_ncr, strict=True))
    assert np.mean(gd_et) > 1.3 and np.mean(gd_ncr) < 1.1


def test_brats_regions_are_not_one_threshold_away(brats_cases):
    # Learnable (clearly better than chance) but not trivially separable.
    for case in brats_cases[:3]:
        brain = case.image[0] > 0
        wt = (case.label > 0)[brain]
        dice = _best_threshold_dice(case.image[0][brain], wt)
        assert 0.2 < dice < 0.93, dice


def test_mass_effect_is_a_radial_push_without_folding():
    radius, strength = 6.0, 0.35
    r = np.linspace(0.0, 60.0, 2001)
    rel = np.stack([r, np.zeros_like(r), np.zeros_like(r)])
    src = mass_effect(rel, radius, strength)[0]
    assert np.all(np.diff(src) > 0)  # strictly increasing along a ray: no folding
    assert np.allclose(src[r <= radius], r[r <= radius] * (1 - strength), atol=1e-5)
    far = r > 4 * radius
    push = r[far] - src[far]
    assert np.allclose(push, strength * radius**3 / r[far] ** 2, rtol=1e-4)
    assert push.max() < 0.03 * radius  # far tissue barely moves
    # Direction: along the ray, in any direction.
    v = np.random.default_rng(0).standard_normal((3, 50))
    out = mass_effect(v, radius, strength)
    cos = (out * v).sum(0) / np.linalg.norm(out, axis=0) / np.linalg.norm(v, axis=0)
    assert np.allclose(cos, 1.0, atol=1e-5)


# --------------------------------------------------------------------------- ISLES phantoms


def test_isles_shapes_lesions_and_contrasts(isles_cases):
    anat = load_anatomy(SP)
    counts, ratios_dwi, ratios_adc = [], [], []
    for case in isles_cases:
        assert case.image.shape == (2, *anat.shape) and case.image.dtype == np.float32
        assert set(np.unique(case.label)) <= {0, 1}
        zero = case.image == 0
        assert (zero == zero[0]).all() and 0.1 < (~zero[0]).mean() < 0.6
        assert (~zero[0])[case.label > 0].all()
        counts.append(int(case.label.sum()))
        if case.label.sum() >= 5:
            ref = _normal_brain(case)
            dwi, adc = case.image
            ratios_dwi.append(dwi[case.label > 0].mean() / np.median(dwi[ref]))
            ratios_adc.append(adc[case.label > 0].mean() / np.median(adc[ref]))
    assert sum(c > 0 for c in counts) >= 3 and len(set(counts)) > 3  # varied lesion load
    assert np.mean(ratios_dwi) > 1.25 and np.mean(ratios_adc) < 0.85


def test_isles_lesions_lie_in_brain_tissue_of_both_hemispheres():
    # Lesion centres of mass over many cases: inside the cerebrum/cerebellum, both sides.
    sides = set()
    for i in range(10):
        case = synth_isles_case((11, i), spacing=SP)
        if case.label.any():
            com = np.argwhere(case.label).mean(0)
            world = case.affine[:3, :3] @ com + case.affine[:3, 3]
            sides.add(bool(world[0] > 0))
            assert (
                case.image[1][case.label > 0].mean()
                < np.median(case.image[1][case.image[1] > 0]) * 1.5
            )
    assert sides == {True, False}


# --------------------------------------------------------------------------- grids


def test_spacing_and_shape_keep_world_coordinates():
    full = load_anatomy(SP)
    crop = load_anatomy(SP, (32, 40, 30))
    assert crop.shape == (32, 40, 30)
    start = np.linalg.inv(full.affine) @ crop.affine[:, 3]
    assert np.allclose(start, np.round(start)) and np.allclose(
        crop.affine[:3, :3], full.affine[:3, :3]
    )
    s = np.round(start[:3]).astype(int)
    inside = tuple(
        slice(max(-a, 0), min(n, m - a)) for a, n, m in zip(s, crop.shape, full.shape, strict=True)
    )
    src = tuple(slice(sl.start + a, sl.stop + a) for sl, a in zip(inside, s, strict=True))
    assert np.array_equal(crop.gm[inside], full.gm[src])

    # The brain occupies the same world box at 2 mm and 4 mm.
    def world_bbox(a):
        idx = np.argwhere(a.brain > 0.5)
        return np.stack(
            [
                a.affine[:3, :3] @ idx.min(0) + a.affine[:3, 3],
                a.affine[:3, :3] @ idx.max(0) + a.affine[:3, 3],
            ]
        )

    assert np.abs(world_bbox(load_anatomy(2.0)) - world_bbox(full)).max() <= 2 * SP
    case = synth_brats_case(0, spacing=SP, shape=(48, 56, 48))
    assert case.image.shape == (4, 48, 56, 48) and case.label.any()


# --------------------------------------------------------------------------- files


def test_scheme_label_mapping_matches_regions():
    lab = np.array([0, NCR, ED, ET], dtype=np.uint8)
    internal = np.stack([np.isin(lab, BRATS_REGIONS[r]) for r in ("ET", "TC", "WT")])
    for fmt in ("msd_brats", "brats2021", "brats2023"):
        scheme = SCHEMES[fmt]
        mapped = to_scheme_labels(lab, BRATS_REGIONS, scheme)
        assert set(mapped.tolist()) == set(scheme.labels)
        regions = labels_to_regions(mapped, scheme)
        order = [list(scheme.regions).index(r) for r in ("ET", "TC", "WT")]
        assert np.array_equal(regions[order].astype(bool), internal)
    with pytest.raises(ValueError, match="regions"):
        to_scheme_labels(lab, BRATS_REGIONS, SCHEMES["isles22"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "fmt", "make"),
    [
        ("brats", "msd", synth_brats_case),
        ("brats", "brats2021", synth_brats_case),
        ("brats", "brats2023", synth_brats_case),
        ("brats", "nnunet", synth_brats_case),
        ("isles", None, synth_isles_case),
        ("isles", "nnunet", synth_isles_case),
    ],
)
def test_written_datasets_read_back_exactly(tmp_path, kind, fmt, make):
    root = synthesize_dataset(
        kind, tmp_path / "ds", 2, seed=4, fmt=fmt, spacing=SP, progress=False, overview=2
    )
    ds = open_dataset(root)
    expected_fmt = {"msd": "msd_brats", None: "isles22"}.get(fmt, fmt)
    assert ds.fmt == expected_fmt and ds.has_labels
    assert ds.case_ids == [case_id_for(expected_fmt, i, kind) for i in range(2)]
    assert ds.scheme.in_channels == len(KINDS[kind]["channels"])
    if fmt == "nnunet":  # the dataset.json names the generator's channels
        assert ds.scheme.channels == KINDS[kind]["channels"]
    regions = BRATS_REGIONS if kind == "brats" else {"lesion": (1,)}
    for i, case in enumerate(ds.cases):
        data = load_case(case)
        ref = make((4, i), spacing=SP)
        assert np.array_equal(data.image, ref.image)
        assert np.allclose(data.affine, ref.affine) and data.spacing == (SP, SP, SP)
        got = labels_to_regions(data.label, ds.scheme)
        want = np.stack([np.isin(ref.label, regions[r]) for r in ds.scheme.regions])
        assert np.array_equal(got.astype(bool), want)
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["kind"] == kind and manifest["format"] == expected_fmt
    assert manifest["complete"] is True and manifest["revision"] == PHANTOM_REVISION
    assert [c["seed"] for c in manifest["cases"]] == [[4, 0], [4, 1]]
    import matplotlib.image

    png = matplotlib.image.imread(root / "overview.png")
    assert png.ndim == 3 and png.shape[0] > 200 and png.std() > 0.05


@pytest.mark.slow
def test_parallel_workers_give_the_same_files(tmp_path):
    one = synthesize_dataset(
        "isles", tmp_path / "a", 2, seed=9, spacing=SP, progress=False, overview=0
    )
    two = synthesize_dataset(
        "isles", tmp_path / "b", 2, seed=9, spacing=SP, progress=False, overview=0, workers=2
    )
    for a, b in zip(open_dataset(one).cases, open_dataset(two).cases, strict=True):
        da, db = load_case(a), load_case(b)
        assert np.array_equal(da.image, db.image) and np.array_equal(da.label, db.label)


def test_an_interrupted_run_is_marked_incomplete_and_can_be_overwritten(tmp_path, monkeypatch):
    import nmfseg.phantoms.synth as synth

    real = synth._make_case

    def failing(job):
        if job["index"] == 1:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(synth, "_make_case", failing)
    out = tmp_path / "d"
    with pytest.raises(KeyboardInterrupt):
        synthesize_dataset("isles", out, 2, spacing=SP, progress=False, overview=0)
    assert json.loads((out / MANIFEST).read_text())["complete"] is False
    monkeypatch.setattr(synth, "_make_case", real)
    synthesize_dataset("isles", out, 2, spacing=SP, progress=False, overview=0, overwrite=True)
    assert json.loads((out / MANIFEST).read_text())["complete"] is True
    assert len(open_dataset(out)) == 2


# --------------------------------------------------------------------------- CLI


def _cli(*args):
    return runner.invoke(app, ["synth", *map(str, args)])


def test_cli_writes_refuses_and_overwrites(tmp_path):
    out = tmp_path / "phantoms"
    base = ("--out", out, "--cases", 1, "--spacing", SP, "--no-progress")
    result = _cli("brats", *base, "--format", "brats2023", "--shape", "40,48,40")
    assert result.exit_code == 0, result.output
    assert (out / "overview.png").is_file() and (out / MANIFEST).is_file()
    assert open_dataset(out).fmt == "brats2023"
    assert load_case(open_dataset(out).cases[0]).image.shape == (4, 40, 48, 40)

    result = _cli("brats", *base)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"nmfseg: error: {out}: is not empty; choose a new folder or pass --overwrite"
    )
    assert "Traceback" not in result.output

    result = _cli("isles", *base, "--overwrite")
    assert result.exit_code == 0, result.output
    assert open_dataset(out).fmt == "isles22"
    assert not any(out.glob("BraTS-*"))  # the earlier dataset is gone


def test_cli_never_deletes_a_foreign_folder(tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    result = _cli("brats", "--out", tmp_path, "--cases", 1, "--spacing", SP, "--overwrite")
    assert result.exit_code == 1 and "refusing to delete it" in result.stderr
    assert keep.read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tumour",), "unknown phantom kind 'tumour'"),
        (("isles", "--format", "msd"), "--format 'msd' cannot hold isles phantoms"),
        (("brats", "--format", "isles22"), "cannot hold brats phantoms"),
        (("brats", "--cases", 0), "--cases must be at least 1"),
        (("brats", "--shape", "40,40"), "--shape must be three sizes"),
        (("brats", "--shape", "a,b,c"), "--shape must look like"),
        (("brats", "--spacing", 0.5), "--spacing must be at least 1 mm"),
    ],
)
def test_cli_bad_options_are_one_line(tmp_path, args, message):
    kind, *rest = args
    result = _cli(kind, "--out", tmp_path / "x", *rest)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "x").exists()  # nothing written
