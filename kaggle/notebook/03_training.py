"""Cells of kaggle/ddpm_celebahq.ipynb, part 03: §6 training.

The percent format (see kaggle/build.py): edit here, then run `python kaggle/build.py`, which joins the parts
in file-name order into one notebook. A part uses the names the parts before it define (hence F821).
"""
# ruff: noqa: E402, F821

# %% [markdown]
# ## 6 · Training: AMP, EMA, cosine LR, CSV logging and a preview every epoch
#
# Algorithm 1: draw t uniformly from {0, …, T−1} and ε ~ N(0, I), minimise ‖ε − ε_θ(√ᾱ_t·x₀ + √(1−ᾱ_t)·ε, t)‖²
# (eq. 14). `ddpm_ref.train.Trainer` adds what a long run needs:
#
# - fp16 autocast and a `GradScaler` on the T4; a step whose gradient is not finite is skipped, never applied;
# - gradient clipping at 1.0, AdamW, cosine learning-rate decay over all epochs;
# - an EMA of the weights (0.999) that previews, samples and evaluation use;
# - `nn.DataParallel` over both GPUs (or DDP with `PARALLEL = "ddp"`); the EMA and every checkpoint hold the
#   unwrapped U-Net, so they load anywhere without a `module.` prefix;
# - `checkpoints/ckpt_latest.pt` after every epoch, written atomically (an interruption never leaves a broken
#   file), with milestones every 10 epochs; `losses.csv` row per epoch;
# - the time budget: at `TIME_BUDGET_H` hours after the first cell the trainer saves and stops mid-epoch, and the
#   notebook goes on to sample and evaluate with the weights so far.
#
# **Resuming** is automatic: the trainer continues from `/kaggle/working/checkpoints/ckpt_latest.pt` when it exists
# (a re-run in the same session); if not, the cell below looks for a previous run's output attached as an input
# (Add Input → Your Work → this notebook's earlier version) and copies its checkpoints and loss log here first.
# Every epoch prints the mean loss, images/s, GPU memory and the estimated time to finish.

# %%
adopted = kg.adopt_previous_run(WORK_DIR)
print(adopted.note)

# %%
from ddpm_ref.train import Trainer

conflicts = kg.resume_conflicts(WORK_DIR / "checkpoints" / "ckpt_latest.pt", cfg)
if conflicts:
    raise RuntimeError(f"{WORK_DIR / 'checkpoints' / 'ckpt_latest.pt'} belongs to another model or schedule "
                       f"({'; '.join(conflicts)}): restore the settings of section 2, or start a new run by "
                       "moving the checkpoints folder away")
budget_s = TIME_BUDGET_H * 3600 - (time.time() - NOTEBOOK_T0)
if budget_s < 60:
    raise RuntimeError(f"only {budget_s:.0f} s of the {TIME_BUDGET_H} h budget are left: raise TIME_BUDGET_H")
run_cfg = cfg.replace(time_budget_s=budget_s)
if PARALLEL == "ddp":
    config_path = WORK_DIR / "ddp_config.json"
    run_cfg.save_json(config_path)
    env, nccl_note = kg.ddp_environment(N_GPUS)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")])
    if nccl_note:
        print(f"note: {nccl_note}")
    cmd = kg.torchrun_command(DDP_PROCESSES, ["train", "--config", str(config_path), "--out", str(WORK_DIR),
                                              "--no-progress"])
    print("launching:", " ".join(cmd))
    watch = kg.LossLogWatcher(WORK_DIR / "losses.csv", run_cfg.epochs, run_cfg.time_budget_s)
    with kg.GpuMonitor(interval=15, watch=watch) as monitor:
        kg.run_streaming(cmd, env=env)
else:
    trainer = Trainer(run_cfg, WORK_DIR, dataset=dataset, callbacks=[kg.NotebookProgress()])
    dp = isinstance(trainer.model, torch.nn.DataParallel)
    where = f"nn.DataParallel over {N_GPUS} GPUs" if dp else str(trainer.device)
    print(f"training on {where}, AMP {trainer.amp_dtype}, GradScaler {trainer.scaler is not None}; speed switches "
          f"(ddpm_ref.perf, the defaults measured for this device): {trainer.perf.switches()}")
    try:
        with kg.GpuMonitor(interval=15) as monitor:
            result = trainer.fit()
    finally:
        trainer.close()
print(monitor.report())
for i in range(N_GPUS if PARALLEL != "ddp" else 0):
    print(f"GPU {i}: peak memory allocated by PyTorch in this process "
          f"{torch.cuda.max_memory_allocated(i) / 2**30:.2f} GiB")
