"""data_scripts/: LFW export, synthetic faces, CelebA-HQ preparation from a local folder, manifests and errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from ddpm_ref.data import ImageFolderDataset, lfw_faces, synthetic_faces

SCRIPTS = Path(__file__).resolve().parents[1] / "data_scripts"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"data_scripts_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def test_export_lfw_writes_the_split_as_files_that_load_back_exactly(tmp_path: Path):
    mod = _load("export_lfw")
    assert mod.run(mod.main, ["--out", str(tmp_path), "--size", "24"]) == 0
    assert len(list((tmp_path / "train").glob("*.png"))) == 90
    assert len(list((tmp_path / "test").glob("*.png"))) == 10
    back = ImageFolderDataset(tmp_path / "test", 24, channels=1, hflip=False)
    want = lfw_faces("test", 24)
    for i in range(10):  # 8-bit PNG: exact up to the uint8 rounding
        assert (back[i] - want[i]).abs().max() <= 1 / 255 + 1e-6
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["groups"]["train"]["count"] == 90 and manifest["groups"]["test"]["image_sizes"] == [[24, 24]]


def test_synthetic_faces_script_is_deterministic(tmp_path: Path):
    mod = _load("make_synthetic_faces")
    for d in ("a", "b"):
        assert mod.run(mod.main, ["--out", str(tmp_path / d), "--n", "5", "--size", "20", "--seed", "7"]) == 0
    a = sorted((tmp_path / "a").glob("*.png"))
    assert len(a) == 5 and all(p.read_bytes() == (tmp_path / "b" / p.name).read_bytes() for p in a)
    with Image.open(a[0]) as im:
        assert im.size == (20, 20) and im.mode == "RGB"
    ds = ImageFolderDataset(tmp_path / "a", 20, hflip=False)
    assert (ds[0] - synthetic_faces(1, 20, seed=7)[0]).abs().max() <= 1 / 255 + 1e-6


def test_prepare_from_a_local_folder_writes_sizes_manifest_and_checks(tmp_path: Path, capsys):
    src = tmp_path / "src"
    _load("make_synthetic_faces").main(["--out", str(src / "nested"), "--n", "6", "--size", "40"])
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    mod = _load("prepare_celebahq")
    out = tmp_path / "prepared"
    assert mod.run(mod.main, ["--src", str(src), "--out", str(out), "--sizes", "16,32", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "skipping unreadable image" in captured.err and "broken.jpg" in captured.err
    for s in (16, 32):
        files = sorted((out / str(s)).glob("*.png"))
        assert len(files) == 6
        with Image.open(files[0]) as im:
            assert im.size == (s, s) and im.mode == "RGB"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["found"] == 7 and len(manifest["skipped"]) == 1 and manifest["sizes"] == [16, 32]
    assert mod.run(mod.main, ["--check", str(out)]) == 0
    # a damaged file fails the check with one line naming it
    victim = sorted((out / "32").glob("*.png"))[2]
    victim.write_bytes(victim.read_bytes()[:-10])
    assert mod.run(mod.main, ["--check", str(out)]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and victim.name in err and err.count("\n") == 1


def test_prepare_errors_are_one_line(tmp_path: Path, monkeypatch, capsys):
    mod = _load("prepare_celebahq")
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    assert mod.run(mod.main, ["--kaggle", "--out", str(tmp_path / "o")]) == 2
    assert "no Kaggle credentials" in capsys.readouterr().err
    assert mod.run(mod.main, ["--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert mod.run(mod.main, ["--src", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err
    assert mod.run(mod.main, ["--src", str(tmp_path), "--out", str(tmp_path / "o"), "--sizes", "x"]) == 2
    assert mod.run(mod.main, ["--check", str(tmp_path / "empty")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["prepare_celebahq.py", "export_lfw.py", "make_synthetic_faces.py"])
def test_scripts_have_help(script: str):
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "usage:" in proc.stdout and "--out" in proc.stdout


@pytest.mark.parametrize(("exercise", "module"), [("train_step", "tests.test_loss"), ("DiTBlock", "tests.test_dit")])
def test_outcome_calibration_reproduces_the_untrained_range(exercise: str, module: str,
                                                           capsys: pytest.CaptureFixture[str]):
    """The calibration script runs the outcome check's own recipe; an answer that learns nothing lands in the
    recorded range."""
    measured = importlib.import_module(module).OUTCOME_MEASURED
    mod = _load("outcome_calibration")
    ranges = mod.main([exercise, "--seeds", "0", "--kinds", "untrained"])
    lo, hi = measured["untrained"]
    assert set(ranges) == {"untrained"} and lo <= ranges["untrained"][0] <= ranges["untrained"][1] <= hi
    assert "OUTCOME_MEASURED = {" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mod.main(["--kinds", "no_such_kind"])


def test_the_shipped_outcome_vae_is_what_its_script_makes(tmp_path: Path):
    """tests/assets/outcome_vae.pt (lesson 11's outcome check loads it) is the script's recipe: trained again here,
    it reconstructs the faces as well (within 5, thread counts change the last digits) and the scale factor it
    stores is 1/std of its latents."""
    import torch

    from ddpm_ref.vae import encode_latents, latent_scale_factor
    from tests.test_dit import OUTCOME_VAE, outcome_first_stage
    from tests.test_loss import outcome_samples_score

    mod = _load("make_outcome_vae")
    assert mod.OUT == OUTCOME_VAE
    shipped, latents, scale = outcome_first_stage()
    faces = lfw_faces("train", 16)
    assert abs(scale - latent_scale_factor(encode_latents(shipped, faces))) < 1e-6
    assert abs(float(latents.std()) - 1) < 1e-5
    assert mod.main(["--out", str(tmp_path / "vae.pt")]) == 0
    again = torch.load(tmp_path / "vae.pt", weights_only=True)
    assert again["state_dict"].keys() == shipped.state_dict().keys()
    fresh = mod.make_vae()
    with torch.no_grad():
        ours, theirs = (outcome_samples_score(v.decode(encode_latents(v, faces))) for v in (shipped, fresh))
    assert ours <= 50 and abs(ours - theirs) <= 5, (ours, theirs)


@pytest.mark.slow
def test_grade_one_student_scores_full_marks_through_nbgrader():
    """The script behind the instructors' guide's whole-course figure: real nbgrader, one lesson here."""
    proc = subprocess.run([sys.executable, str(SCRIPTS / "grade_one_student.py"), "01_noise_schedule"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "1 of 1 lessons full marks" in proc.stdout
    bad = subprocess.run([sys.executable, str(SCRIPTS / "grade_one_student.py"), "99_nope"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "no lesson 99_nope" in bad.stderr
