"""Projection-domain PET simulation: projector adjoint, OSEM, attenuation correction, thinning,
dose scaling, lesions, geometry and determinism (tiny phantoms)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers import muse_sim_tables
import torch

from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, load_volume
from voxdiff.sim.attenuation import MU_511_PER_CM, mu_map_brainweb
from voxdiff.sim.lesions import is_lesion_free
from voxdiff.sim.osem import expected_counts, osem, poisson_nll
from voxdiff.sim.physics import (ProjectionSettings, SinogramModel, axial_axis, dose_tag, draw_counts,
                                 simulate_projection_pet)
from voxdiff.sim.projector import ParallelBeamProjector, PlaneGeometry

# Label values of the tiny MUSE-like tables (as tests/sim/test_pet.py).
VENT, CAUDATE, THAL, WM, GM = 4, 36, 59, 81, 142
FAST = dict(n_views=24, subsets=4, iterations=3, doses=(0.25, 0.05), prompts=2e6)


@pytest.fixture
def tables(tmp_path):
    return muse_sim_tables(tmp_path / "tables")


def _phantom(shape=(28, 24, 20)) -> np.ndarray:
    """An ellipsoidal 'brain': GM shell, WM core, deep nuclei, a ventricle."""
    idx = np.indices(shape).astype(float)
    c = [(s - 1) / 2 for s in shape]
    r = np.sqrt(sum(((idx[k] - c[k]) / (0.45 * shape[k])) ** 2 for k in range(3)))
    lab = np.zeros(shape, np.int32)
    lab[r < 1.0] = GM
    lab[r < 0.8] = WM
    x, y, z = (int(v) for v in c)
    lab[x - 1:x + 1, y - 1:y + 1, z - 1:z + 1] = VENT
    lab[x + 2:x + 5, y - 2:y + 1, z - 1:z + 2] = CAUDATE
    lab[x - 5:x - 2, y + 1:y + 4, z - 1:z + 2] = THAL
    return lab


def _volume(lab: np.ndarray, affine=None) -> Volume:
    aff = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    return Volume(array=lab.astype(np.float32), affine=aff, disk_dtype=np.dtype(np.uint8))


def _disk_geometry(n=24, d=2.0, views=32):
    return PlaneGeometry.for_plane(n, n, d, d, n_views=views)


# ------------------------------------------------------------------------------------ projector
def test_projector_and_subsets_are_exact_adjoints():
    g = PlaneGeometry.for_plane(13, 10, 1.5, 2.0, n_views=12)   # anisotropic pixels, odd sizes
    proj = ParallelBeamProjector(g, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(g.n_pixels, 3, generator=gen, dtype=torch.float64)
    y = torch.rand(g.n_rows, 3, generator=gen, dtype=torch.float64)
    lhs, rhs = float((proj.forward(x) * y).sum()), float((x * proj.back(y)).sum())
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    for a, at in proj.subset_matrices(4):
        ys = torch.rand(a.shape[0], 2, generator=gen, dtype=torch.float64)
        xs = x[:, :2]
        lhs, rhs = float(((a @ xs) * ys).sum()), float((xs * (at @ ys)).sum())
        assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_projector_on_cuda_matches_cpu():
    g = PlaneGeometry.for_plane(12, 10, 2.0, 2.0, n_views=8)
    x = torch.rand(g.n_pixels, 2)
    cpu, gpu = ParallelBeamProjector(g), ParallelBeamProjector(g, device="cuda")
    torch.testing.assert_close(gpu.forward(x).cpu(), cpu.forward(x), rtol=1e-5, atol=1e-5)
    y = cpu.forward(x)
    torch.testing.assert_close(gpu.back(y).cpu(), cpu.back(y), rtol=1e-5, atol=1e-4)


def test_projection_of_a_disk_is_its_chord_length():
    g = PlaneGeometry.for_plane(64, 64, 2.0, 2.0, n_views=8)
    proj = ParallelBeamProjector(g)
    c = (np.arange(64) - 31.5) * 2.0
    disk = (np.hypot(c[:, None], c[None, :]) < 40.0).astype(np.float32)
    sino = proj.forward(torch.from_numpy(disk.reshape(-1, 1))).reshape(g.n_views, g.n_bins).numpy()
    s = (np.arange(g.n_bins) - (g.n_bins - 1) / 2) * g.bin_mm
    chord = 2 * np.sqrt(np.clip(40.0**2 - s**2, 0, None))
    inner = np.abs(s) < 30
    np.testing.assert_allclose(sino[:, inner], np.broadcast_to(chord[inner], sino[:, inner].shape), rtol=0.05)


# ------------------------------------------------------------------------------------ OSEM
def _cylinder_model(mu_value: float, n=32, views=48, pixel=4.0, radius=56.0):
    g = _disk_geometry(n, pixel, views)
    proj = ParallelBeamProjector(g)
    c = (np.arange(n) - (n - 1) / 2) * pixel
    disk = np.hypot(c[:, None], c[None, :]) < radius
    act = torch.from_numpy(disk.astype(np.float32).reshape(-1, 1))
    mu = torch.from_numpy((disk * mu_value * 0.1).astype(np.float32).reshape(-1, 1))   # 1/cm -> 1/mm
    att = torch.exp(-proj.forward(mu)).reshape(g.n_views, g.n_bins, 1)
    return proj, g, act, disk, att


def test_mlem_likelihood_decreases_every_iteration_and_osem_error_drops():
    proj, g, act, disk, att = _cylinder_model(0.096)
    w = 50.0 * att
    b = torch.full_like(w, 2.0)
    ybar = expected_counts(act, proj, w, b)
    nll = []
    osem(ybar, proj, w, b, n_iter=8, n_subsets=1, callback=lambda it, x: nll.append(
        float(poisson_nll(ybar, expected_counts(x, proj, w, b)))))
    assert all(b_ < a_ for a_, b_ in zip(nll, nll[1:])), nll
    errors = []
    osem(ybar, proj, w, b, n_iter=5, n_subsets=6, callback=lambda it, x: errors.append(float((x - act).abs().mean())))
    assert all(b_ < a_ for a_, b_ in zip(errors, errors[1:])), errors
    x = osem(ybar, proj, w, b, n_iter=10, n_subsets=6)
    assert float(x.min()) >= 0.0   # EM keeps positivity


def test_attenuation_corrected_cylinder_is_flat_and_nac_is_cupped():
    proj, g, act, disk, att = _cylinder_model(0.096)
    w_ac = 100.0 * att
    b = torch.full_like(w_ac, 1.0)
    ybar = expected_counts(act, proj, w_ac, b)
    ac = osem(ybar, proj, w_ac, b, n_iter=20, n_subsets=6).reshape(32, 32).numpy()
    nac = osem(ybar, proj, torch.full_like(w_ac, 100.0), b, n_iter=20, n_subsets=6).reshape(32, 32).numpy()
    rr = np.hypot(*np.meshgrid(np.arange(32) - 15.5, np.arange(32) - 15.5, indexing="ij")) * 4.0
    centre, rim = rr < 16, (rr > 36) & (rr < 48)   # a 11 cm cylinder, like a head
    assert ac[centre].mean() / ac[rim].mean() == pytest.approx(1.0, abs=0.05)
    assert ac[centre].mean() == pytest.approx(1.0, rel=0.05)       # the right units after correction
    assert nac[centre].mean() / nac[rim].mean() < 0.85              # cupping without attenuation correction


# ------------------------------------------------------------------------------------ counts
def test_thinning_keeps_poisson_statistics():
    ybar = np.linspace(0.5, 40.0, 200)
    fulls, lows = [], []
    for rep in range(400):
        full, low = draw_counts(ybar, (0.25,), np.random.default_rng(rep))
        fulls.append(full)
        lows.append(low[0.25])
    fulls, lows = np.array(fulls), np.array(lows)
    for counts, mean in ((fulls, ybar), (lows, 0.25 * ybar)):
        np.testing.assert_allclose(counts.mean(0), mean, rtol=0.25, atol=0.15)
        # Poisson: variance = mean in every bin (Fano factor 1), here on average over bins.
        fano = counts.var(0, ddof=1) / counts.mean(0)
        assert fano.mean() == pytest.approx(1.0, abs=0.05)
        assert np.all(np.abs(fano - 1) < 0.5)


def test_image_mean_scales_with_dose_and_rescaled_low_matches_full():
    proj, g, act, disk, att = _cylinder_model(0.096, n=24, views=24, radius=40.0)
    w = 400.0 * att
    b = torch.full_like(w, 5.0)
    model = SinogramModel(projector=proj, w_ac=w, w_nac=torch.full_like(w, 400.0), background=b, plane_shape=(24, 24, 1))
    ybar = expected_counts(act, proj, w, b).numpy().astype(np.float64)
    full, low = draw_counts(ybar, (0.25, 0.05), np.random.default_rng(1))
    kw = dict(iterations=3, subsets=4)
    m_full = float(model.reconstruct(torch.as_tensor(full, dtype=torch.float32), **kw).mean())
    for d in (0.25, 0.05):
        y = torch.as_tensor(low[d], dtype=torch.float32)
        raw = float(model.reconstruct(y, dose=d, rescale=False, **kw).mean())
        assert raw / m_full == pytest.approx(d, rel=0.1)
        assert float(model.reconstruct(y, dose=d, **kw).mean()) == pytest.approx(m_full, rel=0.1)


# ------------------------------------------------------------------------------------ pipeline
def test_dose_tag():
    assert [dose_tag(d) for d in (0.25, 0.1, 0.05, 0.01, 0.005)] == ["25", "10", "5", "1", "0.5"]


def test_lesions_land_where_the_json_says_and_show_in_the_truth(tables):
    vol = _volume(_phantom((32, 32, 24)))
    settings = ProjectionSettings(**FAST, lesions=2, lesion_diameters=(8.0, 6.0), lesion_contrast=(4.0,),
                                  lesion_free_fraction=0.0)
    res = simulate_projection_pet(vol, case="c1", seed=1, settings=settings, tables_dir=tables)
    info = res.lesions
    assert info["case"] == "c1" and info["lesion_free"] is False and len(info["lesions"]) == 2
    act, ids, truth = (res.images[k].array for k in ("activity", "lesions", "truth"))
    assert res.images["lesions"].disk_dtype == np.uint16
    for les in info["lesions"]:
        assert set(les) >= {"id", "centre_voxel", "centre_mm", "diameter_mm", "contrast", "background_activity", "region"}
        c = tuple(int(round(v)) for v in les["centre_voxel"])
        assert ids[c] == les["id"] and les["region"] in ("GM", "WM", "deep_gm")
        np.testing.assert_allclose(les["centre_mm"], (vol.affine @ np.append(les["centre_voxel"], 1))[:3])
        # The centre voxel lies wholly inside the sphere: exactly contrast x background.
        assert act[c] == pytest.approx(les["contrast"] * les["background_activity"], rel=1e-5)
        assert les["contrast"] == pytest.approx(4.0)
        # Volume of the id map ~ the sphere's.
        n_vox = int((ids == les["id"]).sum())
        assert n_vox == pytest.approx(math.pi / 6 * les["diameter_mm"] ** 3 / 8.0, rel=0.5)
        # A visible excess in the noise-free reconstruction.
        assert truth[ids == les["id"]].mean() > 1.3 * les["background_activity"]
    a, b = (np.array(les["centre_voxel"]) for les in info["lesions"])
    assert np.linalg.norm((a - b) * 2.0) >= 8.0 / 2 + 6.0 / 2   # spheres do not overlap


def test_lesion_free_share_is_deterministic_per_case():
    flags = [is_lesion_free(0, f"case{i}", 0.3) for i in range(400)]
    assert flags == [is_lesion_free(0, f"case{i}", 0.3) for i in range(400)]
    assert 0.22 < np.mean(flags) < 0.38
    assert not any(is_lesion_free(0, f"case{i}", 0.0) for i in range(50))


def test_geometry_units_and_determinism(tables, tiny_affine):
    # A PSR-like affine: the scanner axis is the array's second axis, not the last.
    aff = np.array([[0, 0, 2.0, -20], [-2.0, 0, 0, 30], [0, 2.0, 0, -10], [0, 0, 0, 1]])
    assert axial_axis(aff) == 1
    vol = _volume(_phantom((24, 20, 22)), aff)
    settings = ProjectionSettings(**FAST, lesions=1, lesion_diameters=(6.0,), lesion_free_fraction=0.0)
    a = simulate_projection_pet(vol, case="x", seed=3, settings=settings, tables_dir=tables)
    b = simulate_projection_pet(vol, case="x", seed=3, settings=settings, tables_dir=tables)
    c = simulate_projection_pet(vol, case="x", seed=4, settings=settings, tables_dir=tables)
    assert set(a.images) == {"full", "low_25", "low_5", "nac_low_25", "nac_low_5", "truth", "activity", "mumap", "lesions"}
    for role, img in a.images.items():
        assert img.shape == vol.shape and np.array_equal(img.affine, aff)
        np.testing.assert_array_equal(img.array, b.images[role].array)
    assert a.lesions == b.lesions
    assert not np.array_equal(a.images["full"].array, c.images["full"].array)
    brain = vol.array > 0
    truth = a.images["truth"].array[brain].mean()
    assert a.images["full"].array[brain].mean() == pytest.approx(truth, rel=0.1)
    assert a.images["low_5"].array[brain].mean() == pytest.approx(truth, rel=0.15)
    assert a.images["nac_low_5"].array[brain].mean() < 0.8 * truth   # no attenuation correction
    mu = a.images["mumap"].array
    assert set(np.unique(mu)) <= set(MU_511_PER_CM.values()) | {np.float32(v) for v in MU_511_PER_CM.values()}
    assert np.all(mu[brain] == np.float32(0.096))
    p = a.params
    assert p["counts"]["100"]["expected"] == pytest.approx(2e6) and p["counts"]["5"]["expected"] == pytest.approx(1e5)
    assert p["background_fraction_expected"] == pytest.approx(0.3, abs=1e-4)


def test_complement_target_shares_no_noise_with_its_low_dose_and_changes_nothing_else(tables):
    vol = _volume(_phantom((32, 32, 24)))
    plain = ProjectionSettings(**FAST, lesions=0)
    with_comp = ProjectionSettings(**{**FAST, "lesions": 0, "complement_doses": (0.25,)})
    a = simulate_projection_pet(vol, case="n2n", seed=2, settings=plain, tables_dir=tables)
    b = simulate_projection_pet(vol, case="n2n", seed=2, settings=with_comp, tables_dir=tables)
    assert set(b.images) == set(a.images) | {"comp_25"}
    for role, img in a.images.items():   # no extra random draw: every other image is the same
        np.testing.assert_array_equal(img.array, b.images[role].array)
    assert "complement_doses" not in plain.record() and with_comp.record()["complement_doses"] == [0.25]
    assert "comp_d" in b.params["noise_model"] and "comp_d" not in a.params["noise_model"]
    brain = vol.array > 0
    truth = b.images["truth"].array[brain]
    noise = {r: b.images[r].array[brain] - truth for r in ("low_25", "comp_25", "full")}
    assert b.images["comp_25"].array[brain].mean() == pytest.approx(truth.mean(), rel=0.1)   # same units
    corr = lambda u, v: float(np.corrcoef(u, v)[0, 1])  # noqa: E731
    # full = low + complement counts: the full-dose image carries low_25's noise (corr ~ sqrt(0.25)), the
    # complement none of it.
    assert corr(noise["low_25"], noise["full"]) > 0.3
    assert abs(corr(noise["low_25"], noise["comp_25"])) < 0.12
    with pytest.raises(VoxdiffError, match="--complement-doses"):
        ProjectionSettings(**{**FAST, "complement_doses": (0.1,)}).check()


@pytest.mark.parametrize("change, match", [
    (dict(doses=(0.0,)), "--doses"), (dict(doses=(0.1, 0.1)), "repeated"), (dict(subsets=50), "--subsets"),
    (dict(iterations=0), "--iterations"), (dict(prompts=-1.0), "--prompts"), (dict(lesion_contrast=(0.5,)), "--lesion-contrast"),
    (dict(background_fraction=1.0), "--background-fraction"), (dict(nac_doses=(0.3,)), "--nac-doses"),
    (dict(oversample=7), "--oversample"), (dict(lesion_diameters=(100.0,)), "--lesion-diameters"),
])
def test_bad_settings_raise_one_sentence(change, match):
    with pytest.raises(VoxdiffError, match=match) as exc:
        ProjectionSettings(**{**FAST, **change}).check()
    assert "\n" not in str(exc.value)


def test_brainweb_mu_map_matches_shipped_attenuation(shared_data):
    phantom = load_volume(shared_data / "brainweb" / "phantom_1.0mm_normal_crisp.hv")
    shipped = load_volume(shared_data / "brainweb" / "attenuation.hv").array
    mu, info = mu_map_brainweb(np.rint(phantom.array).astype(int))
    assert info["units"] == "1/cm"
    ours = mu[mu > 0]
    theirs = shipped[shipped > 0.01]
    # Soft tissue (the median) equal; bone (the top) within 10 %; air 0 in both.
    assert np.median(ours) == pytest.approx(np.median(theirs), rel=0.02)
    assert ours.max() == pytest.approx(theirs.max(), rel=0.1)
    assert mu.min() == shipped.min() == 0.0
