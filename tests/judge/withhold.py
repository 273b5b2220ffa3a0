"""``ddpm_ref`` as a student's process may see it while one exercise is graded: that exercise withheld.

The copy is made from the package's source: every top-level ``def`` or ``class`` whose name is withheld is replaced
by a stub that raises when used, so neither the object nor its source text exists in the copy. Withheld while
exercise X is graded: X, the other names that do its whole job (:data:`ROUTES`), and every exercise after X in
course order (with their routes): a student has no business with pieces the course has not reached. The pieces
before X stay, as the lessons tell students to build on them.
"""

from __future__ import annotations

import ast
import atexit
import shutil
import threading
from pathlib import Path

from tests.harness import EXERCISES
from tests.integrity import ALIASES
from tests.judge import scratch

#: reference objects that do an exercise's whole job under another name (withheld with it)
ROUTES: dict[str, tuple[str, ...]] = {
    **ALIASES,
    "linear_beta_schedule": ("scaled_linear_beta_schedule", "make_betas"),
    "cosine_beta_schedule": ("make_betas",),
    "q_sample": ("v_target", "VPrediction", "v_loss"),
    "predict_x0": ("predict_eps", "VPrediction"),
    "q_posterior": ("VPrediction",),
    "ddpm_loss": ("v_loss", "_draw_t_and_noise"),
    "train_step": ("train_step_stats",),
    "p_sample": ("p_sample_loop", "denoise"),
    # the few-step solvers (ddpm_ref.solvers): Euler in (x̄, σ̄) is DDIM with η = 0, and the first step of
    # DPM-Solver++(2M) and Heun's step without its corrector are DDIM steps; every sampler's loop over its grid
    # (ddpm_ref.samplers._walk) is most of ddim_sample
    "ddim_step": ("denoise", "karras_heun_step", "dpm_solver_pp_2m_step"),
    "ddim_sample": ("karras_euler_sample", "_karras_sample", "karras_heun_step", "dpm_solver_pp_2m_step", "_walk"),
    "psnr": ("psnr_per_image",),
    "ssim": ("ssim_per_image",),
    "guided_eps": ("GuidedModel",),
    "cfg_sample": ("GuidedModel",),
    "flow_matching_loss": ("flow_path", "flow_velocity_target"),
    "euler_sample": ("_euler_step", "_integrate", "_velocity", "_start"),
    "heun_sample": ("_heun_step", "_integrate", "_velocity", "_start"),
    "score_from_eps": ("ScoreFromEps", "dsm_target"),
    "dsm_loss": ("dsm_target",),
    "reverse_sde_sample": ("reverse_sde_step", "jump_betas", "_run_chain", "_score_at"),
    "probability_flow_sample": ("probability_flow_step", "jump_betas", "_run_chain", "_score_at"),
    # latent diffusion (ddpm_ref.vae, ddpm_ref.dit): encode_latents draws z ~ q(z | x) by the trick, and vae_loss
    # with recon = x is the KL alone. A DiT stays: it builds its blocks with the `block` it is given, and its default,
    # DiTBlock, is the stub (the outcome check trains a DiT of the student's blocks in the student's process)
    "reparameterize": ("encode_latents",),
    "kl_divergence": ("vae_loss",),
}

_STUB_MODULE = '''"""Stubs of the reference pieces withheld while `{exercise}` is graded (tests/judge/withhold.py)."""

from torch import nn

GRADED = {exercise!r}
#: the withheld names something tried to use (the judge reads and clears this after every request)
ATTEMPTS = []


class ReferenceWithheld(AssertionError):
    """The reference piece is not available while this exercise is graded."""


def _refuse(name, how="calls"):
    ATTEMPTS.append(name)
    error = ReferenceWithheld(
        f"`ddpm_ref.{{name}}` is withheld while `{{GRADED}}` is graded (the reference of an exercise, and of the "
        f"exercises after it, are out of reach): write `{{GRADED}}` yourself; earlier pieces of the course are fine")
    error.ddpm_withheld, error.ddpm_how = name, how
    raise error


def function(name):
    def withheld(*args, **kwargs):
        _refuse(name)

    withheld.__name__ = withheld.__qualname__ = name
    withheld.__ddpm_withheld__ = name
    return withheld


def klass(name):
    def how(self):
        return "calls" if type(self).__name__ == name and type(self).__module__.startswith("ddpm_ref") else "subclasses"

    def __init__(self, *args, **kwargs):
        _refuse(name, how(self))

    def forward(self, *args, **kwargs):
        _refuse(name, how(self))

    return type(name, (nn.Module,), {{"__init__": __init__, "forward": forward, "__ddpm_withheld__": name}})
'''


def withheld_names(exercise: str) -> set[str]:
    """Every ``ddpm_ref`` name a student's process must not have while ``exercise`` is graded."""
    if exercise not in EXERCISES:
        raise KeyError(f"unknown exercise {exercise!r}")
    later = EXERCISES[EXERCISES.index(exercise):]
    return {n for x in later for n in (x, *ROUTES.get(x, ()))}


class _Strip(ast.NodeTransformer):
    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.stubbed: list[str] = []

    def visit_Module(self, node: ast.Module) -> ast.Module:  # noqa: N802 (ast's naming)
        body: list[ast.stmt] = []
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name in self.names:
                kind = "klass" if isinstance(stmt, ast.ClassDef) else "function"
                stub = ast.parse(f"{stmt.name} = __import__('ddpm_ref._withheld', fromlist=['_']).{kind}"
                                 f"({stmt.name!r})").body[0]
                body.append(ast.copy_location(stub, stmt))
                self.stubbed.append(stmt.name)
            else:
                body.append(stmt)
        node.body = body
        return node


def build(exercise: str, package: Path, dest: Path) -> list[str]:
    """Write ``package`` (the ``ddpm_ref`` folder) to ``dest`` with ``exercise``'s withheld names stubbed out;
    returns the names stubbed. Data files (``assets/``) are copied; caches are not."""
    names = withheld_names(exercise)
    stubbed: list[str] = []
    for src in sorted(package.rglob("*")):
        rel = src.relative_to(package)
        if "__pycache__" in rel.parts or src.is_dir():
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".py":
            tree = ast.parse(src.read_text(encoding="utf-8"), filename=str(rel))
            strip = _Strip(names)
            tree = ast.fix_missing_locations(strip.visit(tree))
            stubbed += strip.stubbed
            out.write_text(ast.unparse(tree) + "\n", encoding="utf-8")
        else:
            shutil.copy2(src, out)
    (dest / "_withheld.py").write_text(_STUB_MODULE.format(exercise=exercise), encoding="utf-8")
    return sorted(set(stubbed))


_CACHE: dict[str, Path] = {}
_LOCK = threading.Lock()


def cached(exercise: str) -> Path:
    """The withheld copy for ``exercise``, built once per process (read-only for every sandbox that binds it).
    Call it first from the main thread: Python 3.11's parser is not safe to run in two threads at once."""
    with _LOCK:
        if exercise not in _CACHE:
            import ddpm_ref

            root = scratch.folder(f"withheld-{exercise}")
            atexit.register(shutil.rmtree, root, True)
            build(exercise, Path(ddpm_ref.__file__).resolve().parent, root / "ddpm_ref")
            _CACHE[exercise] = root / "ddpm_ref"
        return _CACHE[exercise]
