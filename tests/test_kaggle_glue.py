"""kaggle/ddpm_kaggle/: data discovery, resume from an attached output, env overrides, GPU readout and ETA."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

KAGGLE = Path(__file__).resolve().parent.parent / "kaggle"


@pytest.fixture(scope="module")
def kg() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ddpm_kaggle", KAGGLE / "ddpm_kaggle" / "__init__.py",
                                                  submodule_search_locations=[str(KAGGLE / "ddpm_kaggle")])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ddpm_kaggle", module)  # its modules import each other (and dataclasses look them up)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DDPM_INPUT_ROOT", "DDPM_WORKING_DIR", "DDPM_DATA_DIR", "DDPM_MIN_IMAGES"):
        monkeypatch.delenv(var, raising=False)


def _images(folder: Path, n: int, suffix: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img_{i:04d}{suffix}").write_bytes(b"")
    return folder


# ------------------------------------------------------------------------------------------------ paths and env


def test_roots_default_to_kaggle_and_follow_the_environment(kg: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    assert kg.input_root() == Path("/kaggle/input")
    monkeypatch.setenv("DDPM_INPUT_ROOT", str(tmp_path / "in"))
    monkeypatch.setenv("DDPM_WORKING_DIR", str(tmp_path / "work"))
    assert kg.input_root() == tmp_path / "in"
    assert kg.working_dir() == tmp_path / "work" and (tmp_path / "work").is_dir()


@pytest.mark.parametrize(("text", "default", "expected"), [
    ("1", False, True), ("off", True, False), ("7", 300, 7), ("0.25", 11.0, 0.25), ("dp", "ddp", "dp"),
    ("10,20, 30", (50, 100), (10, 20, 30)), ('{"epochs": 3}', {}, {"epochs": 3}),
])
def test_env_value_parses_by_the_default_type(kg: ModuleType, monkeypatch: pytest.MonkeyPatch, text: str,
                                              default: object, expected: object) -> None:
    monkeypatch.setenv("DDPM_SETTING", text)
    assert kg.env_value("setting", default) == expected


def test_env_value_unset_keeps_default_and_bad_value_names_the_variable(kg: ModuleType,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DDPM_T_START", raising=False)
    assert kg.env_value("T_START", 300) == 300
    monkeypatch.setenv("DDPM_T_START", "three hundred")
    with pytest.raises(ValueError, match="DDPM_T_START='three hundred' cannot be read as int"):
        kg.env_value("T_START", 300)
    monkeypatch.setenv("DDPM_CONFIG_OVERRIDES", "[1, 2]")
    with pytest.raises(ValueError, match="DDPM_CONFIG_OVERRIDES"):
        kg.env_value("CONFIG_OVERRIDES", {})


# ------------------------------------------------------------------------------------------------ data discovery


def test_seed_path_wins_over_a_larger_folder(kg: ModuleType, tmp_path: Path) -> None:
    seed = _images(tmp_path / "celebahq256-images-only" / "data256x256", 3)
    _images(tmp_path / "other" / "faces", 50)
    assert kg.find_image_dir(tmp_path, min_images=10) == seed


def test_largest_image_folder_found_when_the_seed_path_is_absent(kg: ModuleType, tmp_path: Path) -> None:
    _images(tmp_path / "small", 12, ".jpg")
    big = _images(tmp_path / "celeba" / "a" / "b", 30, ".JPG")
    _images(tmp_path / "previous-run" / "generated", 100)  # a run's outputs never count as data
    _images(tmp_path / "previous-run" / "checkpoints", 100)
    assert kg.find_image_dir(tmp_path, min_images=10) == big


def test_missing_dataset_stops_with_the_dataset_to_attach(kg: ModuleType, tmp_path: Path) -> None:
    _images(tmp_path / "few", 4)
    with pytest.raises(kg.KaggleDataNotFound) as err:
        kg.find_image_dir(tmp_path, min_images=10)
    msg = str(err.value)
    assert "denislukovnikov/celebahq256-images-only" in msg and "Add Input" in msg
    assert "holds only 4" in msg and "\n" not in msg
    with pytest.raises(kg.KaggleDataNotFound, match="no folder of at least 1000 images"):
        kg.find_image_dir(tmp_path / "does-not-exist")


def test_data_dir_variable_overrides_the_search(kg: ModuleType, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    mine = _images(tmp_path / "mine", 2)
    _images(tmp_path / "celebahq256-images-only" / "data256x256", 5)
    monkeypatch.setenv("DDPM_DATA_DIR", str(mine))
    assert kg.find_image_dir(tmp_path) == mine
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(kg.KaggleDataNotFound, match="DDPM_DATA_DIR=.* holds no"):
        kg.find_image_dir(tmp_path)


# ------------------------------------------------------------------------------------------------ resume


def _run_output(folder: Path, step: int, milestones: tuple[int, ...] = ()) -> Path:
    ckpts = folder / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"format": "ddpm_ref.ckpt/1", "step": step}, ckpts / "ckpt_latest.pt")
    for m in milestones:
        torch.save({"format": "ddpm_ref.ckpt/1", "step": m}, ckpts / f"ckpt_epoch_{m:03d}.pt")
    (folder / "losses.csv").write_text(f"epoch,step\n1,{step}\n")
    _images(folder / "previews", 2)
    return folder


def test_adopts_the_attached_run_with_the_most_steps(kg: ModuleType, tmp_path: Path) -> None:
    inputs, work = tmp_path / "input", tmp_path / "working"
    _run_output(inputs / "ddpm-v1", 5)
    best = _run_output(inputs / "ddpm-v2" / "output", 12, milestones=(10,))
    torn = inputs / "broken" / "checkpoints"
    torn.mkdir(parents=True)
    (torn / "ckpt_latest.pt").write_bytes(b"not a checkpoint")
    adopted = kg.adopt_previous_run(work, inputs)
    assert adopted.source == best / "checkpoints" / "ckpt_latest.pt" and adopted.step == 12
    names = sorted(p.relative_to(work).as_posix() for p in adopted.copied)
    assert names == ["checkpoints/ckpt_epoch_010.pt", "checkpoints/ckpt_latest.pt", "losses.csv",
                     "previews/img_0000.png", "previews/img_0001.png"]
    assert torch.load(work / "checkpoints" / "ckpt_latest.pt", weights_only=True)["step"] == 12
    assert not list(work.rglob(".*.tmp")), "no temporary copies may be left behind"
    assert "from step 12" in adopted.note


def test_own_checkpoint_is_kept_and_nothing_is_copied(kg: ModuleType, tmp_path: Path) -> None:
    work = _run_output(tmp_path / "working", 3)
    _run_output(tmp_path / "input" / "older", 50)
    adopted = kg.adopt_previous_run(work, tmp_path / "input")
    assert adopted.copied == [] and adopted.step == 3
    assert torch.load(work / "checkpoints" / "ckpt_latest.pt", weights_only=True)["step"] == 3


def test_no_checkpoint_anywhere_means_a_new_run(kg: ModuleType, tmp_path: Path) -> None:
    adopted = kg.adopt_previous_run(tmp_path / "working", tmp_path / "input")
    assert adopted.source is None and adopted.copied == [] and "from scratch" in adopted.note


# ------------------------------------------------------------------------------------------------ small helpers


@pytest.mark.parametrize(("seconds", "text"), [(0, "0 s"), (59.4, "59 s"), (75, "1 min 15 s"),
                                               (3600, "1 h 00 min"), (12345, "3 h 25 min"), (-5, "0 s")])
def test_format_duration(kg: ModuleType, seconds: float, text: str) -> None:
    assert kg.format_duration(seconds) == text


def test_loader_workers_share_the_cpus(kg: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kg.hardware, "cpu_count", lambda: 4)  # a Kaggle GPU session
    assert kg.loader_workers(1) == 3 and kg.loader_workers(2) == 2
    monkeypatch.setattr(kg.hardware, "cpu_count", lambda: 1)
    assert kg.loader_workers(1) == 0 and kg.loader_workers(2) == 0


def test_torchrun_command(kg: ModuleType) -> None:
    cmd = kg.torchrun_command(2, ["train", "--out", "w"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in cmd and cmd[-5:] == ["-m", "ddpm_ref", "train", "--out", "w"]
    with pytest.raises(ValueError, match="nproc"):
        kg.torchrun_command(0, [])


def test_run_streaming_echoes_output_and_reports_failure(kg: ModuleType, capsys: pytest.CaptureFixture) -> None:
    assert kg.run_streaming([sys.executable, "-c", "print('one'); print('two')"]) == 0
    assert capsys.readouterr().out == "one\ntwo\n"
    with pytest.raises(RuntimeError, match=r"exited with code 3 .*\n.*last words"):
        kg.run_streaming([sys.executable, "-c", "print('last words'); raise SystemExit(3)"])


def test_show_image_outside_a_notebook_prints_the_path(kg: ModuleType, capsys: pytest.CaptureFixture,
                                                       tmp_path: Path) -> None:
    kg.show_image(tmp_path / "x.png", caption="a caption")
    assert capsys.readouterr().out == f"a caption\n[image] {tmp_path / 'x.png'}\n"


# ------------------------------------------------------------------------------------------------ GPU readout


def test_gpu_monitor_keeps_peak_memory_and_mean_utilisation(kg: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([
        [{"gpu": 0, "name": "Tesla T4", "used_mib": 1024.0, "total_mib": 15360.0, "util_pct": 40.0},
         {"gpu": 1, "name": "Tesla T4", "used_mib": 512.0, "total_mib": 15360.0, "util_pct": float("nan")}],
        [{"gpu": 0, "name": "Tesla T4", "used_mib": 3072.0, "total_mib": 15360.0, "util_pct": 60.0},
         {"gpu": 1, "name": "Tesla T4", "used_mib": 256.0, "total_mib": 15360.0, "util_pct": float("nan")}],
    ])
    monkeypatch.setattr(kg.progress, "gpu_memory_table", lambda: next(readings))
    monitor = kg.GpuMonitor(interval=60)
    monitor.sample()
    monitor.sample()
    assert monitor.peaks[0]["used_mib"] == 3072.0 and monitor.peaks[1]["used_mib"] == 512.0
    lines = monitor.report().splitlines()
    assert "3.00 / 15.00 GiB ( 20 %)" in lines[1] and lines[1].endswith("50.0 %")
    assert "0.50 / 15.00 GiB (  3 %)" in lines[2] and lines[2].endswith("n/a")


def test_gpu_monitor_without_gpus(kg: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kg.progress, "gpu_memory_table", list)
    with kg.GpuMonitor(interval=0.01) as monitor:
        pass
    assert monitor.report() == "no GPU visible: memory per GPU not measured"


# ------------------------------------------------------------------------------------------------ ETA


def _csv(path: Path, rows: list[tuple[int, float]]) -> None:
    lines = ["epoch,step,loss,lr,images_per_s,elapsed_s"]
    lines += [f"{e},{10 * e},0.5,1e-4,20.0,{elapsed}" for e, elapsed in rows]
    path.write_text("\n".join(lines) + "\n")


def test_loss_log_watcher_reports_new_rows_with_eta(kg: ModuleType, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(kg.progress, "gpu_memory_table", list)
    path = tmp_path / "losses.csv"
    _csv(path, [(1, 30.0), (2, 60.0)])  # a previous session
    watch = kg.LossLogWatcher(path, epochs=10, time_budget_s=100.0)
    assert watch.poll() == []
    _csv(path, [(1, 30.0), (2, 60.0), (3, 100.0), (4, 120.0)])
    with open(path, "a") as f:
        f.write("5,50,0.4")  # a row being written: not reported yet
    new = watch.poll()
    assert [int(r["epoch"]) for r in new] == [3, 4]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("epoch 3/10  step 30  loss 0.5000  lr 1.00e-04  20.0 img/s  epoch time 40 s")
    assert out[1].strip().startswith("ETA 4 min 40 s for the remaining 7 epochs")  # 40 s × 7
    assert out[2].startswith("epoch 4/10") and "epoch time 20 s" in out[2]
    assert "ETA 3 min 00 s for the remaining 6 epochs" in out[3]  # (120 − 60) / 2 × 6
    assert "the time budget stops this session" in out[3]


def test_notebook_progress_estimates_the_finish(kg: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    monkeypatch.setattr(kg.progress, "gpu_memory_table", list)
    trainer = SimpleNamespace(config=SimpleNamespace(epochs=10, time_budget_s=0.0), steps_per_epoch=10, step=40,
                              epoch=4, resumed_from=None)
    cb = kg.NotebookProgress(warmup_steps=5, show_previews=False)
    cb.on_train_start(trainer)
    assert "new run: epoch 4/10, 10 steps per epoch, 60 steps to go" in capsys.readouterr().out
    assert cb._finish_estimate(trainer, per_step=2.0) == "ETA 2 min 00 s for the remaining 60 steps"
    trainer.config.time_budget_s = 30.0
    msg = cb._finish_estimate(trainer, per_step=2.0)
    assert "the time budget stops this session in" in msg and "run again to continue" in msg
    trainer.step = 44
    cb.on_step_end(trainer, 44, None)
    assert capsys.readouterr().out == ""  # 4 steps: no estimate yet
    trainer.step = 45
    cb.on_step_end(trainer, 45, None)
    assert "first estimate after 5 steps" in capsys.readouterr().out
    cb.on_epoch_end(trainer, {"epoch": 5, "step": 50, "loss": 0.25, "lr": 1e-4, "images_per_s": 32.0})
    assert capsys.readouterr().out.startswith("epoch 5/10  step 50  loss 0.2500  lr 1.00e-04  32.0 img/s")


def test_resume_conflicts_name_the_changed_model_settings(kg: ModuleType, tmp_path: Path) -> None:
    from ddpm_ref.config import get_config

    seed = get_config("seed-celebahq256")
    path = tmp_path / "ckpt_latest.pt"
    assert kg.resume_conflicts(path, seed) == []  # nothing to resume: nothing in the way
    torch.save({"format": "ddpm_ref.ckpt/1", "step": 3, "config": seed.to_dict()}, path)
    assert kg.resume_conflicts(path, seed.replace(epochs=40, time_budget_s=60.0, num_workers=3)) == []
    fixed = get_config("celebahq256-fixed")
    assert kg.resume_conflicts(path, fixed) == ["beta_schedule: linear in the checkpoint, scaled_linear now"]


# ------------------------------------------------------------------------------------------------ robustness


def test_capability_check_follows_cuda_binary_compatibility(kg: ModuleType) -> None:
    arch = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "compute_90"]
    assert not kg.capability_supported((6, 0), arch)  # the P100 Kaggle hands out by default
    assert kg.capability_supported((7, 5), arch) and kg.capability_supported((8, 9), arch)  # sm_86 cubin runs on 8.9
    assert kg.capability_supported((10, 0), arch)  # PTX compute_90 is compiled for newer GPUs
    assert not kg.capability_supported((10, 0), arch[:-1])
    assert not kg.capability_supported((7, 0), ["sm_75"])  # a cubin needs the same major and no higher minor


def test_gpu_problems_stop_on_an_unsupported_gpu_and_warn_on_one(kg: ModuleType,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_70", "sm_75", "sm_80"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (6, 0))
    errors, warns = kg.gpu_problems()
    assert len(errors) == 1 and "Tesla P100" in errors[0] and "6.0" in errors[0] and "NvidiaTeslaT4" in errors[0]
    assert len(warns) == 1 and "one GPU instead of two" in warns[0]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))
    assert kg.gpu_problems() == ([], [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kg.gpu_problems() == ([], [])


def test_loader_workers_fit_in_shared_memory(kg: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = 16 * 3 * 256 * 256  # uint8 bytes of one batch of the seed run: 3 MiB
    usage = SimpleNamespace(total=64 * 2**20, used=0, free=64 * 2**20)  # Docker's default /dev/shm
    monkeypatch.setattr(kg.hardware.shutil, "disk_usage", lambda path: usage)
    workers, note = kg.fit_workers_to_shared_memory(3, batch)
    assert workers == 3 and note == ""  # 3 workers × 4 batches × 3 MiB = 36 MiB of 64
    workers, note = kg.fit_workers_to_shared_memory(3, batch * 4)  # the same batches as float32 would not fit
    assert workers == 1 and "using 1 loader workers" in note and "64 MiB free" in note
    workers, note = kg.fit_workers_to_shared_memory(2, batch * 8, processes=2)
    assert workers == 0 and "no loader workers" in note

    def missing(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(kg.hardware.shutil, "disk_usage", missing)
    assert kg.fit_workers_to_shared_memory(3, batch) == (3, "")


def test_ddp_environment_disables_nccl_p2p_only_without_peer_access(kg: ModuleType,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"PATH": "/bin"}
    monkeypatch.setattr(torch.cuda, "can_device_access_peer", lambda i, j: True)
    assert kg.ddp_environment(2, base) == (base, "")
    monkeypatch.setattr(torch.cuda, "can_device_access_peer", lambda i, j: False)
    env, note = kg.ddp_environment(2, base)
    assert env == {"PATH": "/bin", "NCCL_P2P_DISABLE": "1"} and "peer-to-peer" in note
    assert kg.ddp_environment(1, base) == (base, "")
    chosen = {**base, "NCCL_P2P_DISABLE": "0"}  # the user's own setting stands
    assert kg.ddp_environment(2, chosen) == (chosen, "")


def test_a_timed_out_collective_is_explained(kg: ModuleType) -> None:
    script = "print('[rank0]: Watchdog caught collective operation timeout: WorkNCCL(...)'); raise SystemExit(1)"
    with pytest.raises(RuntimeError, match="a collective timed out"):
        kg.run_streaming([sys.executable, "-c", script])
