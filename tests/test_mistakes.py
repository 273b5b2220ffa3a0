"""The grader rejects wrong code and accepts right code.

Each typical mistake of ``tests/mistakes.py`` is executed into a namespace built on ``ddpm_ref`` (so everything
else is correct); exactly its listed checks must fail, and a failing message must name the mistake. Every
correct variant must pass, and ``ddpm_ref`` passes every registered check with a namespace holding nothing but
the exercise's own definition (so no check relies on another exercise's name).
"""

from __future__ import annotations

import ast
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import ddpm_ref
from tests.harness import EXERCISES, REGISTRY, check_name, load_all_checks, reference_impl, run_checks
from tests.mistakes import ALTERNATIVES, CHEATS, MISTAKES, Alternative, Mistake, hidden_checks

#: the mistakes the course promises to catch (by record name)
REQUIRED = {
    "q_sample_alpha_instead_of_alpha_bar", "q_sample_missing_sqrt", "q_sample_t_off_by_one",
    "cumsum_instead_of_cumprod", "posterior_variance_is_beta", "p_sample_noise_at_t0", "predict_x0_inverted",
    "resblock_batchnorm", "resblock_ignores_time", "embedding_frequencies_over_dim", "loss_on_x0",
    "train_step_no_zero_grad", "sample_wrong_direction", "reconstruct_from_T", "psnr_without_range_mapping",
    "ddim_wrong_alpha_bar_prev_at_last_step",
}


def notebook_namespace(source: str) -> dict:
    """A lesson notebook's namespace: the usual imports, every ddpm_ref name, then ``source`` executed on top."""
    ns = {"__name__": "__main__", "math": math, "np": np, "torch": torch, "nn": nn, "F": F}
    ns.update({k: v for k, v in vars(ddpm_ref).items() if not k.startswith("_")})
    exec(compile(source, "<student cell>", "exec"), ns)
    return ns


def run_every_check(exercise: str, namespace: dict) -> dict[str, str | None]:
    """Visible and hidden checks of ``exercise``: {check name: None or the failure message}."""
    load_all_checks()
    results = run_checks(exercise, namespace, raise_on_failure=False)
    if any(f.hidden for f in REGISTRY[exercise]):
        results |= run_checks(exercise, namespace, hidden=True, raise_on_failure=False)
    return results


def defined_names(source: str) -> list[str]:
    tree = ast.parse(source)
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]


def test_the_records_are_well_formed() -> None:
    load_all_checks()
    names = [m.name for m in MISTAKES] + [a.name for a in ALTERNATIVES]
    assert len(names) == len(set(names)), "record names must be unique"
    assert len(MISTAKES) >= 14 and REQUIRED <= {m.name for m in MISTAKES}, REQUIRED - {m.name for m in MISTAKES}
    assert {m.exercise for m in MISTAKES} == set(EXERCISES), set(EXERCISES) - {m.exercise for m in MISTAKES}
    for record in [*MISTAKES, *ALTERNATIVES]:
        assert record.exercise in EXERCISES, record.name
        assert defined_names(record.source) == [record.exercise], f"{record.name}: define exactly {record.exercise}"
        assert record.description and "\n" not in record.description, record.name
    for m in MISTAKES:
        registered = {check_name(f) for f in REGISTRY[m.exercise]}
        assert m.breaks and set(m.breaks) <= registered, f"{m.name}: unknown checks {set(m.breaks) - registered}"
        assert m.feedback, m.name
    assert hidden_checks(next(m for m in MISTAKES if m.name == "unet_skips_attention")) == {"UNet_seed_config_shapes"}


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda m: m.name)
def test_the_mistake_is_caught(mistake: Mistake) -> None:
    results = run_every_check(mistake.exercise, notebook_namespace(mistake.source))
    failed = {name for name, message in results.items() if message is not None}
    assert failed == set(mistake.breaks), (
        f"{mistake.name}: expected exactly {sorted(mistake.breaks)} to fail, got {sorted(failed)}:\n"
        + "\n".join(f"  {n}: {results[n]}" for n in sorted(failed))
    )
    assert any(mistake.feedback in results[n] for n in failed), (
        f"{mistake.name}: no failing message contains {mistake.feedback!r}:\n"
        + "\n".join(f"  {n}: {results[n]}" for n in sorted(failed))
    )


@pytest.mark.parametrize("variant", ALTERNATIVES, ids=lambda a: a.name)
def test_a_correct_variant_passes(variant: Alternative) -> None:
    results = run_every_check(variant.exercise, notebook_namespace(variant.source))
    assert all(message is None for message in results.values()), {n: m for n, m in results.items() if m}


def test_the_reference_passes_every_check_using_only_its_own_name() -> None:
    for exercise in EXERCISES:
        results = run_every_check(exercise, reference_impl(exercise))
        assert all(message is None for message in results.values()), (exercise, {n: m for n, m in results.items() if m})


@pytest.fixture
def grader_restored():
    """Undo what a cheat does to this process: patched ``tests`` modules, ``sys.modules`` entries, ``sys.path``."""
    import sys

    modules = {k: m for k, m in sys.modules.items() if k == "tests" or k.startswith("tests.")}
    contents = {k: dict(vars(m)) for k, m in modules.items()}
    path = list(sys.path)
    yield
    for k in [k for k in sys.modules if k == "tests" or k.startswith("tests.")]:
        del sys.modules[k]
    sys.modules.update(modules)
    for k, m in modules.items():
        vars(m).clear()
        vars(m).update(contents[k])
    sys.path[:] = path


@pytest.mark.parametrize("cheat", [c for c in CHEATS if c.local_feedback is not None], ids=lambda m: m.name)
def test_a_cheat_scores_nothing(cheat: Mistake, grader_restored, capsys: pytest.CaptureFixture[str]) -> None:
    """On a student's own machine too (no judge: the notebook's own runner, in its process), each check cell of
    the exercise fails and says why; the next cell's checks are the real ones again. (Cheats that end or hook the
    process they run in are proven through the judge only, by tests/test_course_nbgrader.py.)"""
    from ddpm_ref import course

    namespace = notebook_namespace(cheat.source)
    cells = [False, True] if hidden_checks(cheat) else [False]
    outputs = []
    for hidden in cells:
        with pytest.raises(AssertionError):
            course.run_checks(cheat.exercise, namespace, hidden=hidden)
        outputs.append(capsys.readouterr().out)
    # a replaced grader is reported by the first check cell after it (then the real checks run again)
    assert cheat.local_feedback in outputs[0], (
        f"{cheat.name}: the check cell does not say {cheat.local_feedback!r}:\n{outputs}")
    course.run_checks("q_sample", ddpm_ref)  # the grader works again for the next cell
    assert "✓ q_sample_values" in capsys.readouterr().out


def test_cheats_cover_every_kind() -> None:
    """The cheat library spans the kinds of attack the judge must refuse, over many exercises and lessons."""
    assert len({c.name for c in CHEATS}) == len(CHEATS)
    assert {c.local_feedback for c in CHEATS} >= {"is the reference", "calls the reference",
                                                  "subclasses the reference", "replaced part of the grader"}
    judged = [c for c in CHEATS if c.local_feedback is None]
    assert len(judged) >= 12 and len({c.exercise for c in judged}) >= 6, [c.name for c in judged]
    kinds = {"exec(": "code made at run time", "compile(": "compiled under another name",
             "FunctionType": "a rebuilt code object", "threading": "a thread", "subprocess": "a child process",
             "input_transformers": "an input transformer", "ast_transformers": "an AST transformer",
             "torch.allclose =": "patched torch", "sys.stdout.write": "printed output",
             "set_custom_exc": "exception handlers", "_getframe": "frame inspection", "os._exit": "an exit call",
             "killpg": "signals", 'open(_path, "a")': "the course's files rewritten",
             "diffusers": "a library that implements the exercise", ".zero_()": "the check's inputs changed",
             "<script>": "script for the grader's browser"}
    missing = [kind for needle, kind in kinds.items() if not any(needle in c.source for c in judged)]
    assert not missing, missing
    for c in CHEATS:
        assert set(c.breaks) == {check_name(f) for f in REGISTRY[c.exercise]}, c.name
