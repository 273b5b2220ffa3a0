"""The benchmark: every speed switch of :mod:`ddpm_ref.speed.perf` timed against plain fp32 eager in the same run
(:mod:`.runner`; ``python -m ddpm_ref bench``), with the timing harness (:mod:`.timing`), the training and sampling
measurements (:mod:`.train`, :mod:`.sample`) and the tables (:mod:`.report`)."""

from . import runner
from .runner import *  # noqa: F403 (the runner's API is the benchmark's: ddpm_ref.bench.main, …)

__all__ = runner.__all__
