"""PD-DDPM segmentation: start distribution, sampling from t', ensembles, CLI and label preparation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.helpers import cli_exit_code, fake_muse_tables, make_cases, train_tiny
from voxdiff.diffusion.samplers import build_sampler
from torch import nn

from voxdiff.diffusion.ddpm import DDPMProcess
from voxdiff.diffusion.masks import encode_mask, forward_diffuse_mask_stats, labels_to_onehot
from voxdiff.errors import VoxdiffError
from voxdiff.io import load_volume, save_volume
from voxdiff.tasks import build_task
from voxdiff.tasks.inference import predict_volume

K = 3  # classes incl. background in the synthetic data


def _labels(shape, seed=0, k=K) -> torch.Tensor:
    return torch.randint(0, k, shape, generator=torch.Generator().manual_seed(seed))


def _seg_task(prediction_type="epsilon", T=100):
    return build_task("segmentation", {
        "num_classes": K,
        "process": {"kind": "ddpm", "num_train_timesteps": T, "prediction_type": prediction_type},
        "backbone": {"kind": "unet", "base_channels": 4, "channel_mults": [1, 2], "num_res_blocks": 1,
                     "norm_groups": 2},
    }).eval()


class _PerfectNet(nn.Module):
    """Returns what a perfect network would: the true mask is the rounded first condition channel."""

    required_multiple = 4  # forces predict_volume to pad odd grids

    def __init__(self, process):
        super().__init__()
        self.process = process

    def forward(self, x, t, cond=None):
        lab = cond[:, :1].round().long().clamp(0, K - 1)
        x0 = encode_mask(labels_to_onehot(lab, K, spatial_dims=3))
        if self.process.prediction_type == "x0":
            return x0
        return self.process.predict_epsilon(x0, x, t)


# ----------------------------------------------------------------------------- start distribution
@pytest.mark.parametrize("t", [0, 25, 99])
def test_forward_diffused_mask_has_documented_mean_and_variance(t):
    p = DDPMProcess(num_train_timesteps=100)
    x0 = encode_mask(labels_to_onehot(_labels((1, 1, 4, 4, 4), seed=1), K, spatial_dims=3))
    mean, var = forward_diffuse_mask_stats(p, x0, t)
    abar = float(p.alphas_cumprod[t])
    torch.testing.assert_close(mean, math.sqrt(abar) * x0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(var, torch.full_like(x0, 1 - abar), atol=1e-6, rtol=1e-5)
    # Empirically: the sampler's own initial state at t' (many draws of one mask).
    sampler = build_sampler(None, p)
    sampler.set_timesteps(1, start_step=t)
    n = 3000
    xs = sampler.initial_state((n, *x0.shape[1:]), start=x0, generator=torch.Generator().manual_seed(t))
    emp_mean, emp_var = xs.mean(0, keepdim=True), xs.var(0, keepdim=True)
    se = math.sqrt((1 - abar) / n)
    assert float((emp_mean - mean).abs().max()) < 5 * se + 1e-6
    assert float((emp_var / var - 1).abs().max()) < 0.15


# ----------------------------------------------------------------------------- sampling from t'
@pytest.mark.parametrize("prediction_type", ["epsilon", "x0"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_perfect_predictor_returns_the_mask_from_t_prime(prediction_type, k):
    task = _seg_task(prediction_type)
    task.net = _PerfectNet(task.process)
    lab = _labels((1, 1, 7, 6, 5), seed=3)  # odd grid: inputs and start are padded, then cropped back
    image = lab.float()
    # A wrong pre-segmentation: the reverse process must still land on the perfect network's mask.
    pre = (lab + 1) % K
    out = predict_volume(task, {"image": image}, steps=k, pad_value=0.0, start=task.encode_labels(pre),
                         start_step=40, samples=3, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert out["labels"].shape == (1, 1, 7, 6, 5)
    assert torch.equal(out["labels"].long(), lab)
    assert torch.equal(out["sample_labels"].long(), lab.expand(1, 3, 7, 6, 5))
    # All samples agree: no disagreement, and the mean mask is (almost exactly) one-hot.
    assert float(out["variance"].abs().max()) < 1e-10
    assert float(out["mutual_information"].max()) < 1e-6
    assert float(out["entropy"].max()) < 1e-3


def test_sliding_windows_carry_the_start_with_the_inputs():
    task = _seg_task("x0")
    task.net = _PerfectNet(task.process)
    lab = _labels((1, 1, 13, 12, 10), seed=4)
    calls = []
    orig = task.predict

    def spy(inputs, **kw):
        calls.append(kw["start"].shape[2:] == inputs["image"].shape[2:])
        return orig(inputs, **kw)

    task.predict = spy
    out = predict_volume(task, {"image": lab.float()}, steps=2, pad_value=0.0, roi=8,
                         start=task.encode_labels(lab), start_step=30, samples=2)
    assert len(calls) > 1 and all(calls), "each window must get its own part of the start"
    assert torch.equal(out["probs"].argmax(1, keepdim=True), lab)


def test_samples_differ_from_a_random_net_and_uncertainty_is_positive():
    torch.manual_seed(0)
    task = _seg_task("epsilon")
    lab = _labels((1, 1, 8, 8, 8), seed=5)
    image = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    out = task.predict({"image": image}, steps=3, start=task.encode_labels(lab), start_step=60, samples=4,
                       generator=torch.Generator().manual_seed(2))
    s = out["sample_labels"][0]
    assert s.shape == (4, 8, 8, 8)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(s[i], s[j]), f"samples {i} and {j} coincide"
    assert float(out["variance"].max()) > 0 and float(out["mutual_information"].max()) > 0
    # The mean probabilities are a distribution per voxel, and the labels their argmax.
    torch.testing.assert_close(out["probs"].sum(1), torch.ones(1, 8, 8, 8))
    assert torch.equal(out["labels"][:, 0].long(), out["probs"].argmax(1))


def test_same_seed_same_samples():
    task = _seg_task()
    lab = _labels((1, 1, 8, 8, 8), seed=6)
    image = lab.float()
    a, b = (task.predict({"image": image}, steps=2, start=task.encode_labels(lab), start_step=30, samples=2,
                         generator=torch.Generator().manual_seed(9)) for _ in range(2))
    assert torch.equal(a["probs"], b["probs"])


# ----------------------------------------------------------------------------- tiny trained models
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    aff = np.diag([-1.5, 2.0, 2.5, 1.0])
    aff[:3, 3] = [10.0, -20.0, 5.0]
    manifest = make_cases(root, affine=aff)
    seg = train_tiny(
        root, manifest, "segmentation",
        "{num_classes: 3, process: {kind: ddpm, num_train_timesteps: 50, prediction_type: epsilon}, "
        "backbone: {kind: unet, base_channels: 4, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 2}}")
    pre = train_tiny(root, manifest, "preseg", "{num_classes: 3, channels: [4, 8], num_res_units: 0}")
    return {"root": root, "seg": seg, "preseg": pre, "affine": aff}


def test_segment_cli_end_to_end_keeps_geometry_and_writes_integers(trained, tmp_path):
    root, aff = trained["root"], trained["affine"]
    img = load_volume(root / "c0_img.nii.gz")
    save_volume(img.array[:15, :14, :13], tmp_path / "odd.nii.gz", affine=aff)  # odd grid: padded and cropped back
    pre = load_volume(root / "c0_lab.nii.gz").array[:15, :14, :13]
    save_volume(pre, tmp_path / "pre.nii.gz", affine=aff, dtype=np.uint8)
    out, unc, probs = tmp_path / "seg.nii.gz", tmp_path / "unc.nii.gz", tmp_path / "probs.nii.gz"
    code = cli_exit_code(["segment", "-m", trained["seg"], "-i", tmp_path / "odd.nii.gz", "-o", out, "--preseg",
                          tmp_path / "pre.nii.gz", "--start-step", 20, "--steps", 3, "--samples", 3, "-u", unc,
                          "--uncertainty-kind", "mi", "--probs", probs, "--seed", 1])
    assert code == 0
    seg = load_volume(out)
    assert seg.shape == (15, 14, 13) and np.allclose(seg.affine, aff)
    assert seg.disk_dtype == np.uint8 and set(np.unique(seg.array)) <= {0.0, 1.0, 2.0}
    u = load_volume(unc)
    assert u.shape == seg.shape and (u.array >= 0).all()
    import nibabel as nib

    p = np.asarray(nib.load(str(probs)).dataobj)
    assert p.shape == (15, 14, 13, 3) and np.allclose(p.sum(-1), 1.0, atol=1e-4)
    assert np.array_equal(p.argmax(-1), seg.array.astype(int))
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_segment_with_preseg_model_vanilla_and_preseg_alone(trained, tmp_path):
    from voxdiff.pipelines import load_pipeline

    img = trained["root"] / "c1_img.nii.gz"
    pd_pipe = load_pipeline(trained["seg"], start_model=trained["preseg"])
    res = pd_pipe(img, steps=2, samples=2)
    res.save({"labels": tmp_path / "a.nii.gz"})
    assert res.info["mode"] == "pd" and res.info["start_step"] == 20 and res.info["nfe"] == 2 * 2 + 1
    seg = load_pipeline(trained["seg"])
    res = seg(img, mode="vanilla", steps=2)
    res.save({"labels": tmp_path / "b.nii.gz"})
    assert res.info["start_step"] is None and res.info["steps"] == 2
    pre = load_pipeline(trained["preseg"])
    res = pre(img)
    res.save({"labels": tmp_path / "c.nii.gz", "entropy": tmp_path / "e.nii.gz"})
    assert res.info["mode"] == "preseg"
    for name in ("a", "b", "c"):
        v = load_volume(tmp_path / f"{name}.nii.gz")
        assert v.shape == (16, 16, 16) and v.disk_dtype == np.uint8 and v.array.max() <= 2
    with pytest.raises(VoxdiffError, match="needs a pre-segmentation"):
        seg(img)
    with pytest.raises(VoxdiffError, match="needs --samples 2"):
        pd_pipe.check_outputs({"labels": tmp_path / "d.nii.gz", "variance": tmp_path / "u.nii.gz"}, samples=1)
    with pytest.raises(VoxdiffError, match="voxdiff checkpoint"):
        load_pipeline(img)
    assert not (tmp_path / "d.nii.gz").exists() and not (tmp_path / "u.nii.gz").exists()


@pytest.mark.parametrize("bad", ["shape", "range"])
def test_segment_refuses_a_bad_preseg_with_exit_2_and_no_output(trained, tmp_path, capsys, bad):
    img = trained["root"] / "c0_img.nii.gz"
    if bad == "shape":
        save_volume(np.zeros((16, 16, 15), np.uint8), tmp_path / "pre.nii.gz", affine=trained["affine"], dtype=np.uint8)
    else:
        save_volume(np.full((16, 16, 16), 7, np.uint8), tmp_path / "pre.nii.gz", affine=trained["affine"],
                    dtype=np.uint8)
    out = tmp_path / "seg.nii.gz"
    code = cli_exit_code(["segment", "-m", trained["seg"], "-i", img, "-o", out, "--preseg", tmp_path / "pre.nii.gz",
                          "-u", tmp_path / "u.nii.gz"])
    assert code == 2
    err = capsys.readouterr().err
    assert "pre.nii.gz" in err and ("shape" in err if bad == "shape" else "0..2" in err)
    assert not out.exists() and not (tmp_path / "u.nii.gz").exists()


# ----------------------------------------------------------------------------- label preparation
def test_composite_label_map_ids_names_and_overlaps(tmp_path):
    from voxdiff.data.labels import composite_label_map, preset_scheme, read_region_tables

    fake_muse_tables(tmp_path)
    tables = read_region_tables(tmp_path)
    assert tables.composite[509] == ("Ventricles", [4, 51, 52])  # trailing empty fields dropped
    parc = np.array([[[0, 1, 4, 51], [52, 47, 48, 60], [81, 99, 0, 1]]], dtype=np.uint8)
    tissue = composite_label_map(parc, preset_scheme("tissue", tables))
    assert tissue.dtype == np.uint8
    assert tissue.tolist() == [[[0, 1, 1, 1], [1, 2, 2, 2], [3, 0, 0, 1]]]
    vent = composite_label_map(parc, preset_scheme("ventricles", tables))
    assert vent.tolist() == [[[0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]]
    hip = composite_label_map(parc, preset_scheme("hippocampus_lr", tables))
    assert hip[0, 1].tolist() == [0, 2, 1, 0]
    assert composite_label_map(parc, [["Hippocampus_L", 47]], tables)[0, 1].tolist() == [0, 1, 1, 0]
    with pytest.raises(VoxdiffError, match="both class"):
        composite_label_map(parc, [[601], [47]], tables)
    with pytest.raises(VoxdiffError, match="unknown region name"):
        composite_label_map(parc, [["Amygdala_L"]], tables)
    with pytest.raises(VoxdiffError, match="unknown label preset"):
        preset_scheme("organs", tables)


def test_make_labels_cli_writes_uint8_labels_and_a_manifest(tmp_path, tiny_affine):
    from voxdiff.data import load_manifest

    data = tmp_path / "ixi"
    (data / "labels").mkdir(parents=True)
    (data / "t1").mkdir()
    fake_muse_tables(data)
    rng = np.random.default_rng(0)
    values = np.array([0, 1, 4, 51, 52, 47, 48, 60, 81])
    for cid in ("IXI001", "IXI002"):
        parc = values[rng.integers(0, len(values), (6, 5, 4))]
        save_volume(parc.astype(np.float32), data / "labels" / f"{cid}.nii.gz", affine=tiny_affine, dtype=np.uint8)
        save_volume(rng.random((6, 5, 4)).astype(np.float32), data / "t1" / f"{cid}.nii.gz", affine=tiny_affine)
    out = tmp_path / "seg-tissue"
    code = cli_exit_code(["make-labels", "--labels-dir", data / "labels", "--images-dir", data / "t1",
                          "--preset", "tissue", "--out-dir", out])
    assert code == 0
    cases = load_manifest(out / "manifest.csv", roles=["image", "label"])
    assert [c.id for c in cases] == ["IXI001", "IXI002"]
    for c in cases:
        lab, parc = load_volume(c.path("label")), load_volume(data / "labels" / f"{c.id}.nii.gz")
        assert lab.disk_dtype == np.uint8 and np.allclose(lab.affine, tiny_affine)
        expect = np.select([np.isin(parc.array, [1, 4, 51, 52]), np.isin(parc.array, [47, 48, 60]), parc.array == 81],
                           [1, 2, 3], 0)
        assert np.array_equal(lab.array, expect)
        assert c.path("image").samefile(data / "t1" / f"{c.id}.nii.gz")
    meta = json.loads((out / "classes.json").read_text())
    assert meta["num_classes"] == 4 and meta["classes"]["1"]["name"] == "CSF"
    # Errors: unknown preset, missing folder, a parcellation without its image.
    assert cli_exit_code(["make-labels", "--labels-dir", data / "labels", "--images-dir", data / "t1",
                          "--preset", "organs", "--out-dir", tmp_path / "x"]) == 2
    assert cli_exit_code(["make-labels", "--labels-dir", data / "nope", "--images-dir", data / "t1",
                          "--preset", "tissue", "--out-dir", tmp_path / "y"]) == 2
    (data / "t1" / "IXI002.nii.gz").unlink()
    assert cli_exit_code(["make-labels", "--labels-dir", data / "labels", "--images-dir", data / "t1",
                          "--preset", "tissue", "--out-dir", tmp_path / "z"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "z" / "manifest.csv").exists()
