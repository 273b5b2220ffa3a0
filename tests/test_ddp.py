"""DistributedDataParallel on the CPU: two gloo processes train together, stay in sync, and the loss falls."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddpm_ref.config import get_config

STEPS = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    # the environment torchrun would set; the Trainer joins the group itself (init_distributed)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DDPM_DIST_TIMEOUT_S="120")
    torch.set_num_threads(1)
    from ddpm_ref.train import Trainer

    cfg = get_config("lfw-tiny", T=50, model_channels=(8, 16), num_res_blocks=1, batch_size=16, dataset_repeat=1,
                     max_steps=STEPS, lr=3e-3, warmup_steps=0, preview_every=0, milestone_every=0, epochs=10)
    trainer = Trainer(cfg, out, progress=False)
    assert trainer.dist.enabled and trainer.dist.world_size == world
    assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    result = trainer.fit()
    flat = torch.cat([p.detach().reshape(-1) for p in trainer.net.parameters()])
    ema = torch.cat([p.detach().reshape(-1) for p in trainer.ema.module.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    torch.save({"losses": result.step_losses, "params": flat, "ema": ema, "all_params": gathered,
                "indices": list(trainer.sampler), "steps_per_epoch": trainer.steps_per_epoch},
               Path(out) / f"rank{rank}.pt")
    trainer.close()


def test_two_process_ddp_on_cpu_stays_in_sync_and_learns(tmp_path: Path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # identical parameters and EMA on both ranks after training (DDP averages the gradients)
    assert torch.equal(r0["params"], r1["params"])
    assert torch.equal(r0["all_params"][0], r0["all_params"][1])
    assert torch.equal(r0["ema"], r1["ema"])
    # each rank saw its own half of the data and drew its own noise
    assert r0["steps_per_epoch"] == r1["steps_per_epoch"] == 90 // 16
    assert set(r0["indices"]).isdisjoint(r1["indices"])
    assert r0["losses"] != r1["losses"]
    # the loss falls (mean over ranks, first vs last 6 steps)
    mean = [(a + b) / 2 for a, b in zip(r0["losses"], r1["losses"], strict=True)]
    assert len(mean) == STEPS
    first, last = sum(mean[:6]) / 6, sum(mean[-6:]) / 6
    assert last < 0.6 * first, f"loss did not fall under DDP: {first:.3f} → {last:.3f}"
    # rank 0 alone wrote the outputs; the checkpoint holds both ranks' noise generators, unwrapped weights
    ckpt = torch.load(tmp_path / "checkpoints" / "ckpt_latest.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]["train_generators"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt_latest.pt"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())


def test_collective_timeout_comes_from_the_environment(monkeypatch):
    import pytest

    from ddpm_ref.distributed import DEFAULT_TIMEOUT_S, collective_timeout_s

    monkeypatch.delenv("DDPM_DIST_TIMEOUT_S", raising=False)
    assert collective_timeout_s() == DEFAULT_TIMEOUT_S >= 600  # longer than any pause of rank 0 alone
    monkeypatch.setenv("DDPM_DIST_TIMEOUT_S", "90")
    assert collective_timeout_s() == 90.0
    for bad in ("soon", "0"):
        monkeypatch.setenv("DDPM_DIST_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="DDPM_DIST_TIMEOUT_S"):
            collective_timeout_s()


def test_the_process_group_is_joined_with_that_timeout(monkeypatch):
    import ddpm_ref.distributed as D

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("DDPM_DIST_TIMEOUT_S", "75")
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(D.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(D.dist, "get_world_size", lambda: 2)
    info = D.init_distributed(backend="gloo")
    assert info.enabled and seen == {"backend": "gloo", "timeout": timedelta(seconds=75)}
