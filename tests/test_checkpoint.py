"""Checkpoints: exact resume, atomic writes, weights_only loading, prefixes, wrong files, export, shipped model."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm_ref
from ddpm_ref.checkpoint import (
    LFW_TINY_ASSET,
    capture_rng_state,
    export_ema,
    load_checkpoint,
    load_weights,
    model_from_checkpoint,
    restore_rng_state,
)
from ddpm_ref.config import build_schedule, get_config
from ddpm_ref.data import lfw_faces
from ddpm_ref.diffusion import ddpm_loss
from ddpm_ref.train import Trainer


def _cfg(**kw):
    base = dict(T=20, model_channels=(8, 16), num_res_blocks=1, batch_size=8, dataset_repeat=1, epochs=3,
                warmup_steps=3, preview_every=0, milestone_every=0, lr=2e-3, ema_decay=0.9)
    base.update(kw)
    return get_config("lfw-tiny", **base)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("k", [7, 11])  # mid-epoch, and exactly at the end of epoch 1 (11 steps per epoch)
def test_resume_is_exact(tmp_path: Path, k: int):
    n = 15
    one = Trainer(_cfg(max_steps=n), tmp_path / "one", progress=False)
    assert one.steps_per_epoch == 11
    losses_one = one.fit().step_losses

    first = Trainer(_cfg(max_steps=k), tmp_path / "two", progress=False)
    losses_a = first.fit().step_losses
    second = Trainer(_cfg(max_steps=n), tmp_path / "two", progress=False)  # resumes from ckpt_latest.pt
    assert second.resumed_from is not None and second.step == k
    losses_b = second.fit().step_losses

    assert losses_a + losses_b == losses_one  # bit-identical losses
    for p, q in zip(_params(one.net), _params(second.net), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(_params(one.ema.module), _params(second.ema.module), strict=True):
        assert torch.equal(p, q)
    assert one.lr == second.lr and one.step == second.step == n and one.epoch == second.epoch == 1
    assert torch.equal(one.generator.get_state(), second.generator.get_state())
    rows_one = (tmp_path / "one" / "losses.csv").read_text()
    rows_two = (tmp_path / "two" / "losses.csv").read_text()
    strip = [line.split(",")[:4] for line in rows_one.splitlines()]  # images/s and elapsed differ
    assert strip == [line.split(",")[:4] for line in rows_two.splitlines()]


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path: Path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]


def test_checkpoint_contents_load_with_weights_only(tmp_path: Path):
    trainer = Trainer(_cfg(max_steps=3), tmp_path, progress=False)
    trainer.fit()
    ckpt = torch.load(tmp_path / "checkpoints" / "ckpt_latest.pt", weights_only=True)
    for key in ("config", "model", "ema", "optimizer", "lr_scheduler", "scaler", "epoch", "step", "rng"):
        assert key in ckpt, key
    assert ckpt["step"] == 3 and ckpt["config"]["model_channels"] == [8, 16]
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python", "train_generators"}
    assert not any(k.startswith("module.") for k in list(ckpt["model"]) + list(ckpt["ema"]))


class _Crash(RuntimeError):
    pass


def _partial_save(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise _Crash("simulated crash in the middle of torch.save")


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_a_crash_mid_write_leaves_the_previous_latest_loadable(tmp_path: Path, monkeypatch, where: str):
    trainer = Trainer(_cfg(max_steps=2), tmp_path, progress=False)
    trainer.fit()
    latest = tmp_path / "checkpoints" / "ckpt_latest.pt"
    before = latest.read_bytes()
    trainer.step = 999  # the next save would differ
    if where == "torch.save":
        monkeypatch.setattr(torch, "save", _partial_save)
    else:
        def _no_replace(src, dst):
            raise _Crash("simulated crash before the rename")
        monkeypatch.setattr(os, "replace", _no_replace)
    with pytest.raises(_Crash):
        trainer.save()
    monkeypatch.undo()
    assert latest.read_bytes() == before
    assert torch.load(latest, weights_only=True)["step"] == 2
    assert sorted(p.name for p in latest.parent.iterdir()) == ["ckpt_latest.pt"]  # no temp file left behind
    resumed = Trainer(_cfg(max_steps=4), tmp_path, progress=False)
    assert resumed.step == 2


def test_module_prefixes_are_accepted_and_architecture_mismatch_is_one_clear_error(tmp_path: Path):
    trainer = Trainer(_cfg(max_steps=1), tmp_path, progress=False)
    trainer.fit()
    net = ddpm_ref.UNet(in_channels=1, channels=(8, 16), num_res_blocks=1)
    wrapped = {f"module.{k}": v for k, v in trainer.net.state_dict().items()}
    load_weights(net, wrapped)
    for p, q in zip(net.parameters(), trainer.net.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="different architecture"):
        Trainer(_cfg(model_channels=(16, 32)), tmp_path, progress=False)
    with pytest.raises(ValueError, match="different architecture"):
        load_weights(ddpm_ref.UNet(in_channels=3, channels=(8, 16), num_res_blocks=1), wrapped)


def test_bad_checkpoint_files_get_one_line_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"not a readable checkpoint \(not a file written by torch.save\)"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"format": "x", "obj": Path("a")}, tmp_path / "objects.pt")  # loads only with weights_only=False
    with pytest.raises(ValueError, match="holds Python objects besides tensors"):
        load_checkpoint(tmp_path / "objects.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "objects.pt").read_bytes()[:200])  # an interrupted copy
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a ddpm_ref checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    for err in ("junk.pt", "objects.pt", "cut.pt", "other.pt"):
        try:
            load_checkpoint(tmp_path / err)
        except ValueError as e:
            assert "\n" not in str(e)


def test_export_keeps_only_the_ema_weights_in_half_precision(tmp_path: Path):
    trainer = Trainer(_cfg(max_steps=3), tmp_path, progress=False)
    trainer.fit()
    out = export_ema(tmp_path / "checkpoints" / "ckpt_latest.pt", tmp_path / "small.pt")
    blob = torch.load(out, weights_only=True)
    assert set(blob) == {"format", "config", "ema", "step", "epoch"}
    assert all(v.dtype == torch.float16 for v in blob["ema"].values() if v.is_floating_point())
    model, schedule, config = model_from_checkpoint(out)
    assert schedule.T == 20 and config.model_channels == (8, 16)
    for p, q in zip(model.parameters(), trainer.ema.module.parameters(), strict=True):
        assert torch.equal(p, q.half().float())
    with pytest.raises(ValueError, match="exported model"):
        Trainer(_cfg(), tmp_path / "x", progress=False).load(out)


def test_shipped_lfw_tiny_checkpoint_is_small_and_denoises_held_out_faces():
    assert LFW_TINY_ASSET.is_file() and LFW_TINY_ASSET.stat().st_size <= 4 * 2**20
    model, schedule = ddpm_ref.load_pretrained_lfw_tiny()
    assert isinstance(model, ddpm_ref.UNet) and model.in_channels == 1 and not model.training
    assert torch.equal(schedule.betas, build_schedule(get_config("lfw-tiny")).betas)  # the preset's schedule
    x0 = lfw_faces("test")
    with torch.no_grad():
        loss = ddpm_loss(model, x0.repeat(8, 1, 1, 1), schedule, generator=torch.Generator().manual_seed(0)).item()
        zero = ddpm_loss(lambda x, t: torch.zeros_like(x), x0.repeat(8, 1, 1, 1), schedule,
                         generator=torch.Generator().manual_seed(0)).item()
    # predicting ε = 0 scores E‖ε‖² ≈ 1; a trained model is far better on faces it never saw
    assert loss < 0.25 * zero, (loss, zero)


def test_resume_rule_sorts_changes_into_free_changed_and_conflicting():
    from ddpm_ref.checkpoint import FREE_FIELDS, MODEL_FIELDS, resume_check

    seed = get_config("seed-celebahq256")
    stored = seed.to_dict()
    assert not resume_check(stored, seed.replace(epochs=40, num_workers=3, channels_last=True, threads=2))
    check = resume_check(stored, get_config("celebahq256-fixed").replace(lr=1e-4))
    assert check.conflicts == ["beta_schedule: linear in the checkpoint, scaled_linear now"]
    assert check.changed == ["lr: 0.0002 in the checkpoint, 0.0001 now"] and check.keys == ["beta_schedule", "lr"]
    old = {k: v for k, v in stored.items() if k != "compile"}  # written before the field existed
    assert not resume_check(old, seed)
    assert not set(MODEL_FIELDS) & FREE_FIELDS and set(MODEL_FIELDS) <= set(stored)
