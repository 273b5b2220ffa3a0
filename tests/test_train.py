"""The training step contract, the trainer's outputs and a tiny run on the LFW faces whose loss falls."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import ddpm_ref
from ddpm_ref import NoiseSchedule, UNet, ddpm_loss
from ddpm_ref.config import get_config
from ddpm_ref.train import Callback, Trainer, train_step, train_step_stats


def _tiny() -> tuple[nn.Module, NoiseSchedule, torch.Tensor]:
    torch.manual_seed(0)
    model = UNet(in_channels=1, channels=(8, 16), num_res_blocks=1, attention=False)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    return model, NoiseSchedule.from_name("linear", 50), x0


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_train_step_is_exported_and_returns_the_loss_of_its_batch():
    assert ddpm_ref.train_step is train_step
    model, schedule, x0 = _tiny()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        expected = ddpm_loss(model, x0, schedule, generator=torch.Generator().manual_seed(1)).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = train_step(model, opt, x0, schedule, generator=g)
    assert isinstance(loss, float)
    assert loss == expected


def test_train_step_zeroes_stale_gradients_and_clips_the_update():
    model, schedule, x0 = _tiny()
    ref = copy.deepcopy(model)
    for p in model.parameters():  # stale gradients from elsewhere must not leak into the step
        p.grad = torch.full_like(p, 1e6)
    clip = 1e-3
    before = _flat(model)
    train_step(model, torch.optim.SGD(model.parameters(), lr=1.0), x0, schedule,
               generator=torch.Generator().manual_seed(5), grad_clip=clip)
    step = _flat(model) - before
    # plain SGD with lr 1: the update is minus the clipped gradient, whose norm is exactly the clip
    assert math.isclose(step.norm().item(), clip, rel_tol=1e-4)
    ref.zero_grad()
    ddpm_loss(ref, x0, schedule, generator=torch.Generator().manual_seed(5)).backward()
    g = torch.cat([p.grad.reshape(-1) for p in ref.parameters()])
    assert g.norm() > clip
    clipped = torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # clip_grad_norm_ works in place
    assert torch.allclose(clipped, g * clip / g.norm(), rtol=1e-5, atol=1e-12)
    assert torch.allclose(step, -clipped, rtol=0, atol=1e-7)  # float32 rounding of θ − (θ − g)


def test_non_finite_gradient_skips_the_step():
    model, schedule, x0 = _tiny()
    with torch.no_grad():
        model.stem.weight[0, 0, 0, 0] = float("nan")
    before = _flat(model).clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stats = train_step_stats(model, opt, x0, schedule, generator=torch.Generator().manual_seed(0))
    assert not stats.applied and math.isnan(stats.loss)
    assert torch.equal(_flat(model).isnan(), before.isnan())
    assert torch.equal(_flat(model).nan_to_num(), before.nan_to_num())  # nothing moved
    assert len(opt.state) == 0  # AdamW never stepped


def test_grad_scaler_path_matches_the_unscaled_step_and_skips_overflow():
    model, schedule, x0 = _tiny()
    twin = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    a = train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), x0, schedule,
                   generator=torch.Generator().manual_seed(2), scaler=scaler)
    b = train_step(twin, torch.optim.SGD(twin.parameters(), lr=0.1), x0, schedule,
                   generator=torch.Generator().manual_seed(2))
    assert a == b
    assert torch.allclose(_flat(model), _flat(twin), rtol=0, atol=1e-7)  # scaling by 2^10 and back is exact-ish
    with torch.no_grad():
        model.stem.bias[0] = float("inf")
    before = _flat(model).clone()
    stats = train_step_stats(model, torch.optim.SGD(model.parameters(), lr=0.1), x0, schedule,
                             generator=torch.Generator().manual_seed(3), scaler=scaler)
    assert not stats.applied
    assert scaler.get_scale() == 2.0**9  # GradScaler halves its scale after an overflow
    assert torch.equal(_flat(model).nan_to_num(posinf=0), before.nan_to_num(posinf=0))


def test_bf16_autocast_on_cpu_gives_a_close_loss():
    model, schedule, x0 = _tiny()
    twin = copy.deepcopy(model)
    fp32 = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x0, schedule,
                      generator=torch.Generator().manual_seed(4))
    bf16 = train_step(twin, torch.optim.SGD(twin.parameters(), lr=0.0), x0, schedule,
                      generator=torch.Generator().manual_seed(4), amp_dtype=torch.bfloat16)
    assert bf16 != fp32 and math.isclose(bf16, fp32, rel_tol=0.05)


class _Record(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.rows: list[dict] = []
        self.previews: list[Path] = []

    def on_step_end(self, trainer, step, stats):
        self.steps.append(step)

    def on_epoch_end(self, trainer, row):
        self.rows.append(row)

    def on_preview(self, trainer, images, path):
        self.previews.append(path)


def test_tiny_lfw_run_loss_falls_and_writes_the_seed_layout(tmp_path: Path):
    cfg = get_config("lfw-tiny", T=50, model_channels=(16, 32), num_res_blocks=1, batch_size=16,
                     dataset_repeat=2, epochs=6, warmup_steps=5, milestone_every=5, preview_every=3, preview_n=4)
    rec = _Record()
    trainer = Trainer(cfg, tmp_path, callbacks=[rec], progress=False)
    assert trainer.steps_per_epoch == 90 * 2 // 16
    result = trainer.fit()
    n = trainer.steps_per_epoch * 6
    assert result.stopped == "epochs" and result.step == n and result.epoch == 6
    losses = result.step_losses
    assert len(losses) == n and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, f"loss did not fall: first 10 steps {first:.3f}, last 10 {last:.3f}"
    assert rec.steps == list(range(1, n + 1))
    assert [p.name for p in rec.previews] == ["epoch_0003.png", "epoch_0006.png"]
    assert all(p.is_file() for p in rec.previews)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt_epoch_005.pt", "ckpt_latest.pt"]
    with open(tmp_path / "losses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "step", "loss", "lr", "images_per_s", "elapsed_s"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r["step"]) for r in rows] == [trainer.steps_per_epoch * e for e in range(1, 7)]
    per_epoch = [sum(losses[i * 11 : (i + 1) * 11]) / 11 for i in range(6)]
    assert [float(r["loss"]) for r in rows] == pytest.approx(per_epoch, rel=1e-5)
    assert float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-12)  # cosine decays to min_lr at the end
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "config.json").is_file()
    # EMA: an average of the trained weights, not the weights themselves
    assert not torch.equal(_flat(trainer.ema.module), _flat(trainer.net))
    ckpt = torch.load(tmp_path / "checkpoints" / "ckpt_latest.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"]) and ckpt["step"] == n


def test_time_budget_and_max_steps_stop_cleanly_and_save(tmp_path: Path):
    cfg = get_config("lfw-tiny", T=20, model_channels=(8, 16), num_res_blocks=1, batch_size=30, max_steps=4,
                     dataset_repeat=1, preview_every=0)
    r = Trainer(cfg, tmp_path / "a", progress=False).fit()
    assert r.stopped == "max_steps" and r.step == 4
    assert torch.load(tmp_path / "a" / "checkpoints" / "ckpt_latest.pt", weights_only=True)["epoch_step"] == 1
    cfg = cfg.replace(max_steps=0, time_budget_s=1e-9)
    r = Trainer(cfg, tmp_path / "b", progress=False).fit()
    assert r.stopped == "time_budget" and r.step == 1
    assert (tmp_path / "b" / "checkpoints" / "ckpt_latest.pt").is_file()


def test_trainer_applies_the_speed_fields_of_its_config(tmp_path: Path):
    cfg = get_config("lfw-tiny", model_channels=(8, 16), num_res_blocks=1, batch_size=8, epochs=1, max_steps=2,
                     preview_every=0, milestone_every=0)
    plain = Trainer(cfg, tmp_path / "a", progress=False, write_outputs=False)
    assert plain.perf == ddpm_ref.perf.train_options(cfg, "cpu") and not plain.perf.channels_last
    fast = Trainer(cfg.replace(channels_last=True, fused_adamw=True), tmp_path / "b", progress=False,
                   write_outputs=False)
    conv = next(m for m in fast.net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    if ddpm_ref.perf.fused_adamw_supported("cpu"):
        assert fast.optimizer.defaults["fused"]
    a, b = plain.fit(), fast.fit()  # same init, batches and noise: the same losses up to float32 reordering
    # oneDNN picks other convolution algorithms for channels_last: 2.4e-4 relative on torch 2.14.1 (x86 wheel)
    assert a.step_losses == pytest.approx(b.step_losses, rel=1e-3)


def test_image_folders_reach_the_trainer_as_uint8_and_map_to_the_same_floats(tmp_path: Path):
    from PIL import Image

    from ddpm_ref.data import ImageFolderDataset, synthetic_faces, to_uint8_image

    for i, face in enumerate(synthetic_faces(4, size=20, seed=0)):
        Image.fromarray(to_uint8_image(face)).save(tmp_path / f"{i}.jpg", quality=95)
    folder = ImageFolderDataset(tmp_path, 16, channels=3, hflip=False)
    cfg = get_config("lfw-tiny", data=str(tmp_path), channels=3, image_size=16, model_channels=(8, 16),
                     num_res_blocks=1, batch_size=2, hflip=False, epochs=1, preview_every=0, milestone_every=0)
    trainer = Trainer(cfg, tmp_path / "run", dataset=folder, progress=False, write_outputs=False)
    x, skipped = trainer.data[1]
    assert x.dtype == torch.uint8 and skipped == 0  # a quarter of the bytes through the workers' shared memory
    assert torch.equal(trainer._batch(x[None])[0], folder[1])  # the very floats the folder gives directly


def test_progress_is_live_on_a_terminal_and_sparse_in_a_log(monkeypatch):
    import io

    from ddpm_ref import progress

    monkeypatch.setenv("DDPM_PROGRESS", "log")
    assert not progress.interactive()
    log = io.StringIO()
    bar = progress.progress_bar(total=200, file=log, miniters=1, dynamic_ncols=True)
    for _ in range(200):
        bar.update(1)
    bar.close()
    assert log.getvalue().count("\r") <= 3 and "200/200" in log.getvalue()  # start, end: not 200 chunks
    monkeypatch.setenv("DDPM_PROGRESS", "live")
    assert progress.interactive()
    monkeypatch.delenv("DDPM_PROGRESS")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")  # a committed Kaggle run
    assert not progress.interactive()
