"""Speed switches for training and sampling, each measured by :mod:`ddpm_ref.bench` against plain fp32 eager.

None of them changes the math of Ho et al. (2020): they change how the same U-Net, loss (eq. 14) and sampler
(Algorithm 2) run. :class:`PerfOptions` names them; :data:`BASELINE` is the plain fp32 eager run:

- ``amp`` — autocast dtype via :func:`ddpm_ref.speed.precision.resolve_amp_dtype` ("auto": bf16 on GPUs of compute
  capability ≥ 8, fp16 + GradScaler below; on a CPU :func:`cpu_amp`: bf16 where it is computed in hardware).
- ``channels_last`` — NHWC tensors for the convolutions (model weights and input batch).
- ``fused_adamw`` — one fused AdamW kernel over all parameters instead of torch's default (multi-tensor
  ``foreach`` updates on CUDA, a loop over the tensors on the CPU).
- ``cudnn_benchmark`` — cuDNN autotunes each convolution shape once (inputs keep one shape in training).
- ``compile`` — ``torch.compile`` with a clean fallback to eager when the compiler is missing or fails.
- ``threads`` — CPU intra-op threads (None: torch's default, one per physical core).

:class:`ddpm_ref.training.Trainer` applies them: each is a field of :class:`~ddpm_ref.training.config.TrainConfig` whose
default (None) is :func:`recommended` for the run's device (:func:`train_options`). Use in a loop of your own::

    opts = perf.recommended(device)
    perf.configure(opts, device)
    model = perf.prepare_model(model.to(device), opts, example=(x0, t))   # channels_last (+ compile)
    optimizer = perf.make_adamw(model.parameters(), lr=2e-4, weight_decay=1e-4, fused=opts.fused_adamw)
    x0 = perf.to_device(batch, device, channels_last=opts.channels_last)  # non-blocking from pinned memory

and for sampling ``sample(perf.SamplingModel.build(ema_model, opts), …)`` under ``torch.inference_mode()``.
On a CPU, call :func:`use_cpu_threads` before the work starts (it reads the load average, which the run itself
raises). :func:`resolve_device` turns a device spec ("auto", "cpu", "cuda:1") into a ``torch.device``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .compiling import CompileResult, compile_model
from .precision import AmpMode, autocast, cpu_amp, cpu_has_native_bf16, needs_grad_scaler, resolve_amp_dtype

__all__ = [
    "PerfOptions",
    "BASELINE",
    "recommended",
    "train_options",
    "resolve_device",
    "use_cpu_threads",
    "available_cores",
    "default_threads",
    "cpu_threads",
    "cpu_has_native_bf16",
    "cpu_amp",
    "configure",
    "backend_flags",
    "prepare_model",
    "compile_model",
    "CompileResult",
    "make_adamw",
    "fused_adamw_supported",
    "make_grad_scaler",
    "to_device",
    "loader_kwargs",
    "SamplingModel",
    "autocast",
]


@dataclass(frozen=True)
class PerfOptions:
    """Which speed switches are on. Frozen: derive variants with :meth:`replace`."""

    amp: AmpMode = "off"
    channels_last: bool = False
    fused_adamw: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False
    compile_mode: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.amp not in ("auto", "off", "fp16", "bf16"):
            raise ValueError(f"amp must be 'auto', 'off', 'fp16' or 'bf16', got {self.amp!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or None for torch's default), got {self.threads}")

    def replace(self, **changes: Any) -> PerfOptions:
        return dataclasses.replace(self, **changes)

    def label(self) -> str:
        """Short human name: "fp32 eager" for the baseline, else the switches that are on."""
        parts = []
        if self.amp != "off":
            parts.append(f"amp={self.amp}")
        for name in ("channels_last", "fused_adamw", "cudnn_benchmark"):
            if getattr(self, name):
                parts.append(name)
        if self.compile:
            parts.append(f"compile({self.compile_mode})" if self.compile_mode else "compile")
        if self.threads is not None:
            parts.append(f"threads={self.threads}")
        return " + ".join(parts) if parts else "fp32 eager"

    def switches(self) -> str:
        """The switches that are on besides ``amp`` ("none" when none is), e.g. "channels_last + fused_adamw"."""
        label = self.replace(amp="off").label()
        return "none" if label == "fp32 eager" else label

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: the plain run every speed-up is compared with: fp32, eager, NCHW, torch's default AdamW, no autotuning
BASELINE = PerfOptions()

_DEFAULT_THREADS = torch.get_num_threads()  # torch's choice at start-up: one per physical core


def default_threads() -> int:
    """torch's intra-op thread count at start-up (one per physical core), whatever was set since."""
    return _DEFAULT_THREADS


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_threads(cores: int | None = None, load: float | None = None) -> int:
    """Intra-op threads for a CPU run: the cores left idle by the 1-minute load average, at least 1.

    torch starts one thread per physical core; when other processes keep those cores busy, every parallel
    region waits for its slowest, descheduled thread (measured on 2 shared cores: one thread trained lfw-tiny
    ~10× faster than two at a load average of 7; see BENCHMARKS.md). ``cores`` defaults to torch's start-up
    thread count (capped by the affinity mask), ``load`` to ``os.getloadavg()[0]`` (0 where unknown). A thread
    count set with ``OMP_NUM_THREADS`` is the user's choice and is returned as it is.
    """
    if cores is None and load is None and "OMP_NUM_THREADS" in os.environ:
        return _DEFAULT_THREADS
    if cores is None:
        cores = min(_DEFAULT_THREADS, available_cores())
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):
            load = 0.0
    return max(1, min(cores, round(cores - load)))


def recommended(device: torch.device | str) -> PerfOptions:
    """The settings to train with on ``device``: what :mod:`ddpm_ref.bench` measured to win there (BENCHMARKS.md).

    CUDA: AMP per :mod:`ddpm_ref.speed.precision`, channels_last, fused AdamW, cuDNN autotuning; compile stays off (it
    costs a minute or two of compilation up front and has not yet been measured to win on the target GPUs).
    CPU: autocast "auto" (bf16 where the CPU computes bf16 in hardware, :func:`cpu_amp`, else fp32) and
    :func:`cpu_threads` threads for the current load. On the 2-core benchmark machine channels_last lost
    (×0.31 on lfw-tiny, ×0.87 on the 256 px seed model), fused AdamW was within noise and torch.compile took
    275 s to compile for no gain (×0.95), so all three stay off on a CPU.
    """
    if torch.device(device).type == "cuda":
        return _DEVICE_DEFAULTS["cuda"]
    return _DEVICE_DEFAULTS["cpu"].replace(threads=cpu_threads())


#: :func:`recommended` per device type, less the CPU's load-dependent thread count
_DEVICE_DEFAULTS = {
    "cuda": PerfOptions(amp="auto", channels_last=True, fused_adamw=True, cudnn_benchmark=True),
    "cpu": PerfOptions(amp="auto"),
}


#: the TrainConfig fields that are speed switches: None there means "the default of :func:`recommended`"
TRAIN_SWITCHES = ("channels_last", "fused_adamw", "cudnn_benchmark", "compile")


def train_options(config: Any, device: torch.device | str) -> PerfOptions:
    """The :class:`PerfOptions` a :class:`~ddpm_ref.training.config.TrainConfig` asks for on ``device``.

    ``config.amp`` as given; each switch of :data:`TRAIN_SWITCHES` that is None takes the value of
    :func:`recommended` for the device type; ``config.compile_mode`` ("" for torch's default) is the
    ``torch.compile`` mode; ``config.threads`` > 0 sets the CPU threads (0: leave the process's
    setting, which the command line sets with :func:`use_cpu_threads`).
    """
    base = _DEVICE_DEFAULTS.get(torch.device(device).type, _DEVICE_DEFAULTS["cpu"])
    changes: dict[str, Any] = {"amp": config.amp, "threads": config.threads or None,
                               "compile_mode": config.compile_mode or None}
    for name in TRAIN_SWITCHES:
        value = getattr(config, name)
        changes[name] = getattr(base, name) if value is None else bool(value)
    return base.replace(**changes)


def use_cpu_threads(log: Any = None) -> int:
    """Set torch's CPU threads to :func:`cpu_threads` (the one thread policy of the command line, demo and
    lessons) and return the count; ``log`` (e.g. ``print``) hears about it when that is fewer than the default."""
    n = cpu_threads()
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    if log is not None and n < _DEFAULT_THREADS:
        try:
            load = f"load {os.getloadavg()[0]:.1f}"
        except (OSError, AttributeError):
            load = "a busy machine"
        log(f"note: other processes keep the CPU busy ({load} on {available_cores()} cores): using {n} CPU "
            "thread(s); set OMP_NUM_THREADS to choose")
    return n


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """"auto" → cuda:local_rank when CUDA is available, else cpu; anything else is passed to torch.device."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is cuda but no CUDA GPU is visible: use --device cpu (or auto)")
    return device


def configure(opts: PerfOptions, device: torch.device | str) -> None:
    """Set the process-wide switches of ``opts`` for ``device`` (cuDNN autotuning, CPU threads) and leave them."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = opts.cudnn_benchmark
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)


@contextlib.contextmanager
def backend_flags(opts: PerfOptions, device: torch.device | str) -> Iterator[None]:
    """:func:`configure` for the duration of a ``with`` block, then restore what was there."""
    old_bench, old_threads = torch.backends.cudnn.benchmark, torch.get_num_threads()
    configure(opts, device)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old_bench
        if torch.get_num_threads() != old_threads:
            torch.set_num_threads(old_threads)


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def to_device(x: Tensor, device: torch.device | str, *, channels_last: bool = False) -> Tensor:
    """Copy a batch [B, C, H, W] to ``device``; non-blocking (overlaps compute when ``x`` is in pinned memory)."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=_memory_format(channels_last)) if x.ndim == 4 else x


def loader_kwargs(device: torch.device | str, num_workers: int) -> dict[str, Any]:
    """DataLoader arguments for feeding ``device``: pinned memory for CUDA, persistent prefetching workers."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    kw: dict[str, Any] = {"num_workers": num_workers, "pin_memory": torch.device(device).type == "cuda"}
    if num_workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4)
    return kw


# ------------------------------------------------------------------------------------------------ optimizer


def fused_adamw_supported(device: torch.device | str) -> bool:
    """Whether this torch has a fused AdamW kernel for ``device`` (CUDA; CPU since torch 2.4)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # older torch: CUDA only
        return torch.device(device).type == "cuda"
    return torch.device(device).type in _get_fused_kernels_supported_devices()


def make_adamw(
    params: Any, *, lr: float, weight_decay: float, fused: bool = False, **kwargs: Any
) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019); ``fused=True`` uses the single-kernel update where supported.

    Falls back to the default (foreach) implementation, with a warning, where this torch has no fused kernel.
    """
    params = list(params)
    if fused:
        first = params[0]["params"][0] if isinstance(params[0], dict) else params[0]
        if fused_adamw_supported(first.device):
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True, **kwargs)
        warnings.warn(f"no fused AdamW for {first.device.type} in torch {torch.__version__}: using the "
                      "default implementation", stacklevel=2)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kwargs)


def make_grad_scaler(device: torch.device | str, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A GradScaler where fp16 gradients need loss scaling (fp16 on CUDA), else None."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type) if needs_grad_scaler(device, amp_dtype) else None


# ------------------------------------------------------------------------------------------------ model


def prepare_model(
    model: nn.Module,
    opts: PerfOptions,
    *,
    example: Sequence[Tensor] | None = None,
    backward: bool = True,
) -> nn.Module:
    """Apply ``opts`` to a model already on its device: channels_last weights (in place), then compile.

    Returns the module to call (the compiled one, or ``model`` itself). ``example`` inputs make a failing
    compile fall back now (see :func:`compile_model`).
    """
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    if not opts.compile:
        return model
    amp_dtype = resolve_amp_dtype(next(model.parameters()).device, opts.amp) if example is not None else None
    if example is not None and opts.channels_last:
        example = [e.contiguous(memory_format=torch.channels_last) if e.ndim == 4 else e for e in example]
    return compile_model(model, mode=opts.compile_mode, example=example, backward=backward,
                         amp_dtype=amp_dtype).model


class SamplingModel(nn.Module):
    """ε_θ for the samplers, run fast: autocast and channels_last inside, fp32 [B, C, H, W] out.

    Only the network runs under autocast; the sampler's update (eqs. 6–7, 11, 12) stays in the input's dtype.
    ``model`` is the (EMA) U-Net; ``runner`` the module to call (e.g. a compiled copy), default ``model``.
    Call the samplers under ``torch.inference_mode()`` for the smallest overhead.
    """

    def __init__(self, model: nn.Module, opts: PerfOptions = BASELINE, runner: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.opts = opts
        object.__setattr__(self, "_runner", runner)  # not a registered submodule: it shares model's parameters
        self.amp_dtype = resolve_amp_dtype(next(model.parameters()).device, opts.amp)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        runner = self._runner if self._runner is not None else self.model
        with autocast(x.device, self.amp_dtype):
            eps = runner(x, t)
        return eps.float().contiguous()

    @classmethod
    def build(
        cls, model: nn.Module, opts: PerfOptions, *, example: Sequence[Tensor] | None = None
    ) -> SamplingModel:
        """Put ``model`` in eval mode, apply channels_last and (with a clean fallback) compile it."""
        model.eval()
        if opts.channels_last:
            model.to(memory_format=torch.channels_last)
        runner = None
        if opts.compile:
            amp_dtype = resolve_amp_dtype(next(model.parameters()).device, opts.amp)
            if example is not None and opts.channels_last:
                example = [e.contiguous(memory_format=torch.channels_last) if e.ndim == 4 else e for e in example]
            with torch.inference_mode():
                res = compile_model(model, mode=opts.compile_mode, example=example, amp_dtype=amp_dtype)
            runner = res.model if res.compiled else None
        return cls(model, opts, runner)
