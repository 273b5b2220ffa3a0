"""kaggle/: the committed notebook is a fresh build of ddpm_ref and the template, with the seed's sections."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
KAGGLE = REPO / "kaggle"

#: the seed run's twelve sections, each with a word its heading must contain
SECTIONS = {1: "GPU", 2: "Hyperparameters", 3: "Dataset", 4: "β schedule", 5: "U-Net", 6: "Training",
            7: "sampler", 8: "generated", 9: "reverse", 10: "Reconstruction", 11: "PSNR", 12: "Loss"}


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build() -> ModuleType:
    return _load("kaggle_build", KAGGLE / "build.py")


@pytest.fixture(scope="module")
def notebook() -> nbformat.NotebookNode:
    return nbformat.read(KAGGLE / "ddpm_celebahq.ipynb", as_version=4)


def test_committed_notebook_is_a_fresh_build(build: ModuleType) -> None:
    committed = (KAGGLE / "ddpm_celebahq.ipynb").read_text(encoding="utf-8")
    assert committed == build.render(), (
        "kaggle/ddpm_celebahq.ipynb is stale: ddpm_ref/, kaggle/notebook/ or kaggle/ddpm_kaggle/ "
        "changed since it was built. Run `python kaggle/build.py` and commit the notebook."
    )


def test_build_check_mode_detects_a_stale_file(build: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "nb.ipynb"
    out.write_text("{}")
    assert build.main(["--check", "--out", str(out)]) == 1
    assert build.main(["--out", str(out)]) == 0
    assert build.main(["--check", "--out", str(out)]) == 0


def test_twelve_numbered_sections_in_order(notebook: nbformat.NotebookNode) -> None:
    headings = [line for c in notebook.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("## ")]
    numbered = [(int(m.group(1)), h) for h in headings if (m := re.match(r"^## (\d+) · ", h))]
    assert [n for n, _ in numbered] == list(range(1, 13)), f"section headings found: {headings}"
    for n, heading in numbered:
        assert SECTIONS[n].lower() in heading.lower(), f"section {n} should be about {SECTIONS[n]!r}: {heading!r}"


def test_notebook_is_stored_without_outputs(notebook: nbformat.NotebookNode) -> None:
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "store the notebook without outputs"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def _package_cell_files(notebook: nbformat.NotebookNode) -> dict[str, str]:
    cells = [c for c in notebook.cells if "package-sources" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell must carry the package sources"
    tree = ast.parse(cells[0].source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PACKAGE_FILES":
            return ast.literal_eval(node.value)
    raise AssertionError("the package cell defines no PACKAGE_FILES")


def test_package_cell_carries_the_package_verbatim(notebook: nbformat.NotebookNode, build: ModuleType) -> None:
    files = _package_cell_files(notebook)
    expected = ({p.relative_to(REPO).as_posix() for p in build.package_sources()}
                | {p.relative_to(KAGGLE).as_posix() for p in build.glue_sources()})
    assert "ddpm_kaggle/__init__.py" in expected
    assert set(files) == expected
    for name, text in files.items():
        source = REPO / name if name.startswith("ddpm_ref/") else KAGGLE / name
        assert text == source.read_text(encoding="utf-8"), f"{name} in the notebook differs from {source}"
    for module in ("__init__", "__main__", "_moved", "training/trainer", "unet", "samplers", "evaluation/evaluate",
                   "cli/main"):
        assert f"ddpm_ref/{module}.py" in files


def test_package_cell_comes_before_any_import_of_the_package(notebook: nbformat.NotebookNode) -> None:
    code = [c for c in notebook.cells if c.cell_type == "code"]
    first_use = next(i for i, c in enumerate(code) if re.search(r"^\s*(from|import) ddpm_", c.source, re.M))
    assert "package-sources" in code[first_use].metadata.get("tags", [])


def test_template_keeps_no_second_copy_of_the_model_or_math() -> None:
    template = "\n".join(p.read_text(encoding="utf-8") for p in sorted((KAGGLE / "notebook").glob("*.py")))
    assert "# %% [package]" in template
    assert not re.search(r"^\s*class \w+\(", template, re.M), "classes belong in ddpm_ref, not in the notebook"
    defined = set(re.findall(r"^\s*def (\w+)\(", template, re.M))
    import ddpm_ref

    assert not defined & set(ddpm_ref.__all__), f"the template redefines ddpm_ref functions: {defined}"


def test_template_errors_are_one_line_and_name_the_problem(build: ModuleType) -> None:
    with pytest.raises(SystemExit, match=r"unknown cell kind \[weird\]"):
        build.parse_template("# %% [weird]\nx = 1\n")
    with pytest.raises(SystemExit, match="markdown line without '#'"):
        build.parse_template("# %% [markdown]\n# fine\nnot a comment\n")
    cells = build.parse_template("preamble\n# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\n")
    assert cells == [("markdown", "# Title\n\ntext"), ("code", "x = 1")]


def test_raw_literals_round_trip(build: ModuleType) -> None:
    for text in ['a = "\\n"\n', "x = '''q'''\n", "ends with a backslash \\", "tab\tand unicode ᾱ\n"]:
        assert ast.literal_eval(build._literal(text)) == text


def test_kernel_metadata_for_kaggle_kernels_push() -> None:
    meta = json.loads((KAGGLE / "kernel-metadata.json").read_text())
    assert (KAGGLE / meta["code_file"]).is_file()
    assert meta["kernel_type"] == "notebook" and meta["language"] == "python"
    assert meta["enable_gpu"] == "true" and meta["enable_internet"] == "false"
    assert meta["machine_shape"] == "NvidiaTeslaT4"  # GPU T4 ×2 in the editor's accelerator menu
    assert meta["dataset_sources"] == ["denislukovnikov/celebahq256-images-only"]
    user, slug = meta["id"].split("/")
    assert slug == meta["title"].lower().replace(" ", "-"), "Kaggle derives the slug from the title"
