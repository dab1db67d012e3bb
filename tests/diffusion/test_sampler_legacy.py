"""Checkpoints written before samplers were split from processes sample exactly as before.

``REFERENCE`` holds the outputs of the pre-split implementation (commit 10051e4: the sampler
inside ``DDPMProcess`` / ``BridgeProcess``) for a seeded chain of an elementwise model, so
every operation is exactly rounded IEEE arithmetic on the CPU: the new sampler must match
bit for bit, through both the old call (``sample_loop(..., eta=...)`` with the process's
configured sampler) and the new one (``sampler=None`` + ``sampler_options``).
"""

from __future__ import annotations

import pytest
import torch

from voxdiff.diffusion import sample_loop
from voxdiff.diffusion.factory import build_process
from voxdiff.diffusion.samplers import build_sampler
from voxdiff.errors import VoxdiffError

SHAPE = (2, 1, 2, 2, 2)

# process config (as stored in a checkpoint's model.process) and the sample_loop call.
CASES = {
    "ddpm_default_eps": (dict(kind="ddpm", num_train_timesteps=50), dict(steps=5)),
    "ddim_v": (dict(kind="ddpm", num_train_timesteps=50, prediction_type="v", sampler="ddim"), dict(steps=4)),
    "ddpm_eta0_x0": (dict(kind="ddpm", num_train_timesteps=50, prediction_type="x0"), dict(steps=3, eta=0.0)),
    "ddim_eta03_noclip_pd": (dict(kind="ddpm", num_train_timesteps=50, sampler="ddim", eta=0.3, clip_sample=False),
                             dict(steps=6, start=True, start_step=20)),
    "ddpm_eta05_pd_cosine": (dict(kind="ddpm", num_train_timesteps=50, beta_schedule="cosine", clip_range=0.5),
                             dict(steps=7, eta=0.5, start=True, start_step=30)),
    "bridge_det_x0": (dict(kind="bridge", num_train_timesteps=20), dict(steps=4)),
    "bridge_eta1_residual_clip": (dict(kind="bridge", num_train_timesteps=20, eta=1.0, prediction_type="residual",
                                       clip_sample=0.8), dict(steps=5)),
    "bridge_eta05_eps_pd": (dict(kind="bridge", num_train_timesteps=20, prediction_type="epsilon", noise_scale=0.5),
                            dict(steps=3, eta=0.5, start=True, start_step=15)),
}

REFERENCE = {
    "ddpm_default_eps": [
        0.048405274748802185, 0.4847940504550934, 0.6384382247924805, 0.7530567049980164, -0.7114637494087219,
        -0.23645532131195068, 0.07273907959461212, 0.6322565078735352, 0.4748772978782654, 0.8241994976997375,
        0.5299401879310608, -0.9775612354278564, 0.47419723868370056, 0.3925993740558624, 0.39211228489875793,
        0.9390789866447449],
    "ddim_v": [
        0.12056034058332443, 0.13290700316429138, 0.1379975825548172, 0.11312317103147507, 0.1272161304950714,
        0.13178950548171997, 0.12242074310779572, 0.11977575719356537, 0.138277068734169, 0.1234886422753334,
        0.11693534255027771, 0.12425083667039871, 0.136072039604187, 0.13914912939071655, 0.13123570382595062,
        0.13993211090564728],
    "ddpm_eta0_x0": [
        -0.7083246111869812, 0.0025765958707779646, 0.3004223704338074, -0.7426766157150269,
        -0.3303931653499603, -0.06280755996704102, -0.6109687685966492, -0.7271884679794312, 0.3167767822742462,
        -0.5484855771064758, -0.735517680644989, -0.5038895010948181, 0.1877593696117401, 0.367798388004303,
        -0.09521112591028214, 0.4136103391647339],
    "ddim_eta03_noclip_pd": [
        -0.9731095433235168, 0.1636020392179489, 0.8884986042976379, -0.762241780757904, -0.2953878343105316,
        0.10120956599712372, -0.3409547209739685, -0.6056509017944336, 0.7657886147499084, 0.038439661264419556,
        -0.6393566131591797, -0.39299383759498596, 0.5842075943946838, 1.127486228942871, 0.36725327372550964,
        1.2168594598770142],
    "ddpm_eta05_pd_cosine": [
        -0.5, 0.09529291093349457, 0.5, -0.4138484299182892, -0.3990417718887329, -0.11062052100896835,
        -0.16140128672122955, -0.414295494556427, 0.4290745258331299, 0.27042877674102783, -0.3844727873802185,
        -0.30285754799842834, 0.3278283476829529, 0.5, 0.3002789616584778, 0.5],
    "bridge_det_x0": [
        0.4669736623764038, 0.4124934673309326, 0.3580131530761719, 0.3035329580307007, 0.24905265867710114,
        0.1945723593235016, 0.140092134475708, 0.08561187982559204, 0.031131580471992493, -0.023348677903413773,
        -0.07782894372940063, -0.1323091983795166, -0.18678946793079376, -0.24126972258090973,
        -0.2957499623298645, -0.35023021697998047],
    "bridge_eta1_residual_clip": [
        0.800000011920929, 0.800000011920929, 0.800000011920929, 0.800000011920929, 0.5428577661514282,
        0.800000011920929, 0.800000011920929, 0.5290274620056152, 0.800000011920929, 0.5921124219894409,
        -0.27620261907577515, -0.800000011920929, -0.40143823623657227, -0.2674543261528015, -0.800000011920929,
        -0.707180380821228],
    "bridge_eta05_eps_pd": [
        -1.9719699621200562, -0.5048609972000122, 0.6058226823806763, -1.4450472593307495, -0.3764681816101074,
        -0.004166727419942617, -0.6601738333702087, -1.1506664752960205, 0.5210548043251038,
        -0.18909579515457153, -0.9416616559028625, -0.3225053548812866, 0.5185924172401428, 1.541957974433899,
        0.6256279945373535, 1.4287692308425903],
}


def _model(x, t):
    return 0.7 * x - 0.01 * t.to(x.dtype).reshape(-1, 1, 1, 1, 1)


def _call(name):
    pcfg, kw = CASES[name]
    kw = dict(kw)
    if kw.pop("start", False):
        kw["start"] = torch.linspace(-0.9, 0.9, 16).reshape(SHAPE)
    source = torch.linspace(1.2, -0.4, 16).reshape(SHAPE) if pcfg["kind"] == "bridge" else None
    return build_process(pcfg), dict(kw, source=source)


@pytest.mark.parametrize("name", list(CASES))
def test_old_checkpoints_sample_bit_identically(name):
    process, kw = _call(name)
    expect = torch.tensor(REFERENCE[name], dtype=torch.float32).reshape(SHAPE)
    old_style = sample_loop(_model, process, SHAPE, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(old_style, expect)
    eta = kw.pop("eta", None)
    new_style = sample_loop(_model, process, SHAPE, sampler=None, sampler_options={"eta": eta},
                            generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(new_style, expect)


def test_old_config_forms_are_read():
    old = build_process({"kind": "ddpm", "clip_sample": True, "clip_range": 0.5, "sampler": "ddim", "eta": 0.2})
    assert old.clip_sample == 0.5 and old.config()["clip_sample"] == 0.5 and "clip_range" not in old.config()
    assert build_sampler(None, old).options == {"eta": 0.2, "clip_sample": 0.5}
    # The stored eta belongs to the stored sampler; another sampler starts from its own default.
    assert build_sampler("ddpm", old).options == {"eta": 1.0, "clip_sample": 0.5}
    assert build_process({"kind": "ddpm", "clip_sample": False}).clip_sample is None
    assert build_process({"kind": "ddpm"}).clip_sample == 1.0
    assert build_process({"kind": "bridge", "clip_sample": 2.0}).clip_sample == 2.0
    rebuilt = build_process({"kind": "ddpm", **old.config()})
    assert rebuilt.config() == old.config()


@pytest.mark.parametrize("cfg", [{"kind": "ddpm", "eta": 1.5}, {"kind": "ddpm", "eta": -1},
                                 {"kind": "bridge", "eta": 2.0}, {"kind": "ddpm", "sampler": "euler"},
                                 {"kind": "ddpm", "sampler": "bridge"}, {"kind": "bridge", "clip_sample": 0},
                                 {"kind": "ddpm", "clip_range": -1.0}, {"kind": "heat"}])
def test_bad_process_configs_raise_voxdiff_error(cfg):
    with pytest.raises(VoxdiffError):
        build_process(cfg)
