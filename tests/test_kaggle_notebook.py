"""kaggle/ddpm_celebahq.ipynb runs top to bottom on a CPU with a tiny override and writes the seed's outputs.

The environment variables the notebook reads (``DDPM_INPUT_ROOT``, ``DDPM_WORKING_DIR``, ``DDPM_CONFIG_OVERRIDES``
…) point it at a folder of synthetic faces laid out like the Kaggle dataset and shrink the run to 32 px, a 2-level
U-Net, T = 20 and 20 one-step epochs. Four executions: the whole run; a run stopped at step 12 (up to the end of
training) whose output is then attached as the input of a fresh session that finishes it bit-identically to the whole
run (both sessions up to the end of training: the rest is the whole run's); a session with no dataset; and the
DDP switch (torchrun, 2 CPU processes, gloo) up to the end of training.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
import torch
from PIL import Image

from ddpm_ref.headless import HeadlessClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "kaggle" / "ddpm_celebahq.ipynb"
SEED_DATA = "celebahq256-images-only/data256x256"
TINY = {"image_size": 32, "model_channels": [16, 32], "T": 20, "batch_size": 8, "epochs": 20, "num_workers": 0}
N_FACES = 8  # one batch: one optimizer step per epoch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
nbclient = pytest.importorskip("nbclient")


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_notebook(input_root: Path, work: Path, cwd: Path, *, overrides: dict | None = None,
                 env: dict[str, str] | None = None, stop_after: str | None = None) -> nbformat.NotebookNode:
    """Execute the committed notebook in a fresh kernel (up to the first of its own code cells with ``stop_after``)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cwd.mkdir(parents=True, exist_ok=True)
    values = {
        "DDPM_INPUT_ROOT": str(input_root), "DDPM_WORKING_DIR": str(work),
        "DDPM_CONFIG_OVERRIDES": json.dumps({**TINY, **(overrides or {})}),
        "DDPM_T_START": "15", "DDPM_T_STARTS": "5,10,15",
        # two shared cores: one thread per process avoids oversubscription stalls
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore",
        **(env or {}),
    }
    client = HeadlessClient(nb, timeout=240, kernel_name="python3", label="kaggle/ddpm_celebahq.ipynb",
                            resources={"metadata": {"path": str(cwd)}})
    with _environ(values):
        if stop_after is None:
            client.execute()
        else:
            with client.setup_kernel():
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
                    own = "package-sources" not in cell.metadata.get("tags", [])
                    if cell.cell_type == "code" and own and stop_after in cell.source:
                        break
    return nb


def text_of(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def snapshot(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic RGB faces (36 px: the notebook resizes and crops them to 32) in a folder."""
    sys.path.insert(0, str(REPO / "data_scripts"))
    try:
        from make_synthetic_faces import main as make_faces
    finally:
        sys.path.remove(str(REPO / "data_scripts"))
    out = tmp_path_factory.mktemp("faces")
    assert make_faces(["--out", str(out), "--n", str(N_FACES), "--size", "36", "--seed", "0"]) == 0
    return out


def _input_root(base: Path, faces: Path) -> Path:
    root = base / "input"
    shutil.copytree(faces, root / SEED_DATA)
    return root


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, faces: Path) -> dict:
    base = tmp_path_factory.mktemp("full")
    root = _input_root(base, faces)
    before = snapshot(root)
    nb = run_notebook(root, base / "working", base / "cwd")
    return {"nb": nb, "text": text_of(nb), "work": base / "working", "root": root, "before": before,
            "cwd": base / "cwd"}


def test_every_seed_output_appears_with_its_name(full_run: dict) -> None:
    work = full_run["work"]
    for name in ["checkpoints/ckpt_latest.pt", "checkpoints/ckpt_epoch_010.pt", "checkpoints/ckpt_epoch_020.pt",
                 "losses.csv", "loss.png", "target.png", "reconstructed.png", "reconstruction.png",
                 "reverse_strips.png", "metrics.csv", "evaluate.csv", "evaluate_protocol.json",
                 "evaluate.png", "quality.csv", "quality.png", "brightness.png", "previews/epoch_0001.png",
                 "previews/epoch_0020.png"]:
        assert (work / name).is_file(), f"{name} missing from the working dir"
    generated = sorted(p.name for p in (work / "generated").iterdir())
    assert generated == [f"sample_{i:03d}.png" for i in range(5)]
    for name in ["generated/sample_000.png", "target.png", "reconstructed.png"]:
        with Image.open(work / name) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    assert "all 22 expected outputs are present" in full_run["text"]


def test_logs_and_metrics_tables(full_run: dict) -> None:
    work = full_run["work"]
    with open(work / "losses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 21)) and int(rows[-1]["step"]) == 20
    assert list(rows[0]) == ["epoch", "step", "loss", "lr", "images_per_s", "elapsed_s"]
    with open(work / "metrics.csv", newline="") as f:
        metrics = list(csv.DictReader(f))
    assert [m["image"] for m in metrics] == ["0", "1", "2", "3", "4", "mean"]
    assert {m["t_start"] for m in metrics} == {"15"}
    mean_psnr = sum(float(m["psnr_db"]) for m in metrics[:5]) / 5
    assert abs(float(metrics[-1]["psnr_db"]) - mean_psnr) < 1e-3
    with open(work / "evaluate.csv", newline="") as f:
        sweep = list(csv.DictReader(f))
    assert [int(r["t_start"]) for r in sweep] == [5, 10, 15]
    assert all(int(r["n_images"]) == 5 for r in sweep)
    # the t_start = 15 row of the sweep is the metrics table's mean: one protocol
    assert abs(float(sweep[-1]["psnr_mean"]) - float(metrics[-1]["psnr_db"])) < 1e-3
    protocol = json.loads((work / "evaluate_protocol.json").read_text())
    assert protocol["step"] == 20 and protocol["t_start"] == [5, 10, 15] and protocol["n_images"] == 5
    with open(work / "quality.csv", newline="") as f:  # MS-SWD of the samples against the real faces
        quality = {(r["images"], r["reference"]): r for r in csv.DictReader(f)}
    assert int(quality["samples", "real"]["n_images"]) == 100 and "msswd_32px" in quality["samples", "real"]
    assert ("pure noise", "real") in quality


def test_checkpoint_is_unwrapped_and_weights_only_loadable(full_run: dict) -> None:
    ckpt = torch.load(full_run["work"] / "checkpoints" / "ckpt_latest.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 20 and ckpt["epoch"] == 20 and ckpt["config"]["name"] == "seed-celebahq256"
    assert ckpt["config"]["beta_schedule"] == "linear"  # the faithful preset is the default
    for key in ("model", "ema"):
        assert not [k for k in ckpt[key] if k.startswith("module.")]


def test_writes_only_under_the_working_dir(full_run: dict) -> None:
    assert snapshot(full_run["root"]) == full_run["before"], "the notebook wrote into the input dir"
    assert not any(full_run["cwd"].iterdir()), "the notebook wrote into its current directory"


def test_reports_progress_eta_memory_and_the_seed_figures_as_the_seeds(full_run: dict) -> None:
    text = full_run["text"]
    assert "no checkpoint here or in the inputs: training starts from scratch" in text
    assert "epoch 20/20  step 20" in text and "ETA" in text
    assert "no GPU visible: memory per GPU not measured" in text
    assert "EMA preview after epoch 20" in text
    assert "the seed's documented figures, for comparison" in text
    images = sum(1 for c in full_run["nb"].cells for o in c.get("outputs", [])
                 if o.output_type == "display_data" and "image/png" in o.data)
    assert images >= 20 + 8  # a preview per epoch, and the figures of sections 3, 4, 8, 9, 10, 11 and 12


def test_stopped_run_attached_as_input_continues_exactly(full_run: dict, faces: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    first = tmp_path_factory.mktemp("first")
    nb1 = run_notebook(_input_root(first, faces), first / "working", first / "cwd", overrides={"max_steps": 12},
                       stop_after="kg.torchrun_command")  # the rest of that session is the whole run's
    ckpt1 = torch.load(first / "working" / "checkpoints" / "ckpt_latest.pt", weights_only=True)
    assert ckpt1["step"] == 12 and "stopped (max_steps) at epoch 12" in text_of(nb1)

    second = tmp_path_factory.mktemp("second")
    root = _input_root(second, faces)
    shutil.copytree(first / "working", root / "ddpm-celebahq-256")  # Add Input → this notebook's output
    nb2 = run_notebook(root, second / "working", second / "cwd", stop_after="kg.torchrun_command")
    text = text_of(nb2)
    assert f"continuing the attached run {root / 'ddpm-celebahq-256'} from step 12" in text
    assert "resumed from" in text and "at step 12" in text
    work = second / "working"
    assert (work / "checkpoints" / "ckpt_epoch_010.pt").is_file() and (work / "checkpoints/ckpt_epoch_020.pt").is_file()
    with open(work / "losses.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, 21))
    resumed = torch.load(work / "checkpoints" / "ckpt_latest.pt", weights_only=True)
    straight = torch.load(full_run["work"] / "checkpoints" / "ckpt_latest.pt", weights_only=True)
    assert resumed["step"] == straight["step"] == 20
    for key in ("model", "ema"):
        for name, value in straight[key].items():
            assert torch.equal(resumed[key][name], value), f"{key}.{name} differs after stop + resume"


def test_missing_dataset_stops_at_section_3_naming_the_dataset(tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    with pytest.raises(nbclient.exceptions.CellExecutionError) as err:
        run_notebook(tmp_path / "input", tmp_path / "working", tmp_path / "cwd")
    assert "KaggleDataNotFound" in str(err.value)
    assert "denislukovnikov/celebahq256-images-only" in str(err.value)
    assert not (tmp_path / "working" / "checkpoints").exists()


def test_ddp_switch_trains_with_torchrun(faces: Path, tmp_path: Path) -> None:
    nb = run_notebook(_input_root(tmp_path, faces), tmp_path / "working", tmp_path / "cwd",
                      overrides={"epochs": 2, "preview_every": 0},
                      env={"DDPM_PARALLEL": "ddp", "DDPM_DDP_PROCESSES": "2"},
                      stop_after="kg.torchrun_command")
    text = text_of(nb)
    assert "torch.distributed.run --standalone --nproc_per_node=2 -m ddpm_ref train" in text
    assert "epoch 2/2  step 2" in text  # the loss-log watcher's report from the notebook process
    ckpt = torch.load(tmp_path / "working" / "checkpoints" / "ckpt_latest.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 2 and ckpt["config"]["parallel"] == "ddp"
    assert not [k for k in ckpt["model"] if k.startswith("module.")]
