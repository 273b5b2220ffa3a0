"""The speed switches of ddpm_ref.perf give the results of the plain fp32 eager path, within tolerance.

Tiny U-Net (1 channel, widths 16/32, 16×16 images) on the CPU, fixed seeds. Tolerances: layout and optimizer
changes reorder float32 sums only (1e-5); bf16 autocast keeps 8 bits of mantissa (a few 1e-3 relative on the
output, loss within 3 %).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from ddpm_ref import NoiseSchedule, UNet, ddpm_loss, p_sample, train_step
from ddpm_ref.speed import perf, precision

B, C, S = 4, 1, 16


def _model(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(in_channels=C, channels=(16, 32), num_res_blocks=1)


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, S, S, generator=g) * 2 - 1, torch.randint(0, 50, (B,), generator=g)


def _schedule() -> NoiseSchedule:
    return NoiseSchedule.from_name("linear", 50)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def _train(opts: perf.PerfOptions, steps: int = 3) -> tuple[list[float], torch.nn.Module]:
    """``steps`` of the project's train_step under ``opts`` from the same init, batch and noise."""
    model = _model()
    x0, _ = _batch()
    with perf.backend_flags(opts, "cpu"):
        run = perf.prepare_model(model, opts)
        opt = perf.make_adamw(model.parameters(), lr=1e-3, weight_decay=1e-4, fused=opts.fused_adamw)
        amp = perf.resolve_amp_dtype("cpu", opts.amp)
        x = perf.to_device(x0, "cpu", channels_last=opts.channels_last)
        g = torch.Generator().manual_seed(7)
        losses = [train_step(run, opt, x, _schedule(), generator=g, amp_dtype=amp) for _ in range(steps)]
    return losses, model


def _function_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Relative difference of two trained models' outputs on a fresh batch.

    Parameters are not compared one by one: a conv bias right before a GroupNorm has a zero gradient in exact
    arithmetic, so Adam turns its rounding noise into steps of size lr in any direction, without effect on ε_θ.
    """
    x, t = _batch(seed=5)
    with torch.no_grad():
        return _rel(a.float()(x, t), b.float()(x, t))


def test_channels_last_matches_contiguous_forward_and_gradients():
    x, t = _batch()
    ref, cl = _model(), _model()
    cl.to(memory_format=torch.channels_last)
    assert cl.stem.weight.is_contiguous(memory_format=torch.channels_last)
    out_ref = ref(x, t)
    out_cl = cl(x.contiguous(memory_format=torch.channels_last), t)
    assert _rel(out_cl, out_ref) < 1e-5
    out_ref.square().mean().backward()
    out_cl.square().mean().backward()
    for (name, p), q in zip(ref.named_parameters(), cl.parameters(), strict=True):
        assert torch.allclose(q.grad, p.grad, rtol=1e-4, atol=1e-6), f"gradient of {name} differs under channels_last"


def test_channels_last_training_steps_match_plain():
    base_losses, base = _train(perf.BASELINE)
    cl_losses, cl = _train(perf.PerfOptions(channels_last=True))
    assert cl_losses == pytest.approx(base_losses, rel=1e-5)
    assert _function_diff(cl, base) < 1e-4


def test_fused_adamw_matches_the_default_adamw_on_cpu():
    if not perf.fused_adamw_supported("cpu"):
        pytest.skip("this torch has no fused AdamW for the CPU")
    base_losses, base = _train(perf.BASELINE)
    fused_losses, fused = _train(perf.PerfOptions(fused_adamw=True))
    assert fused_losses == pytest.approx(base_losses, rel=1e-5)
    assert _function_diff(fused, base) < 1e-4


def test_fused_adamw_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(perf, "fused_adamw_supported", lambda device: False)
    with pytest.warns(UserWarning, match="no fused AdamW"):
        opt = perf.make_adamw(_model().parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    assert not opt.defaults.get("fused")


def test_bf16_autocast_is_close_to_fp32():
    """Same t and ε: the bf16 loss within 1 %, the gradient within 5 % (cosine > 0.999), ε_θ within 2 %."""
    x0, _ = _batch()
    losses, grads = [], []
    for amp in (None, torch.bfloat16):
        model = _model()
        with perf.autocast("cpu", amp):
            loss = ddpm_loss(model, x0, _schedule(), generator=torch.Generator().manual_seed(7))
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
    assert torch.nn.functional.cosine_similarity(grads[1], grads[0], dim=0) > 0.999
    assert _rel(grads[1], grads[0]) < 5e-2
    x, t = _batch(seed=5)
    model = _model()
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t)
    assert out.dtype == torch.bfloat16
    assert 1e-6 < _rel(out, ref) < 2e-2  # bf16 really ran, and stayed close
    # and the project's train_step runs under bf16 with the same loss
    base_losses, _ = _train(perf.BASELINE, steps=1)
    bf_losses, _ = _train(perf.PerfOptions(amp="bf16"), steps=1)
    assert bf_losses[0] == pytest.approx(base_losses[0], rel=1e-2)


def test_compile_fallback_returns_the_eager_model_with_the_reason():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    model = _model()
    x, t = _batch()
    with pytest.warns(UserWarning, match="torch.compile failed"):
        res = perf.compile_model(model, example=(x, t), backward=True, backend=broken_backend)
    assert not res.compiled and res.model is model
    assert "no C++ compiler" in res.error
    assert all(p.grad is None for p in model.parameters())  # the failed trial left no gradients behind
    assert torch.equal(res.model(x, t), _model()(x, t))


def test_compiled_model_matches_eager():
    torch._dynamo.reset()
    model = _model()
    x, t = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback would warn: this must really compile
        res = perf.compile_model(model, example=(x, t), backward=True, backend="aot_eager")
    assert res.compiled and res.error is None and res.model is not model
    assert all(p.grad is None for p in model.parameters())
    ref = _model()
    out, out_ref = res.model(x, t), ref(x, t)
    assert _rel(out, out_ref) < 1e-5
    out.sum().backward()
    out_ref.sum().backward()
    assert max(_rel(p.grad, q.grad) for p, q in zip(model.parameters(), ref.parameters(), strict=True)) < 1e-4
    torch._dynamo.reset()


def test_sampling_model_matches_plain_sampler():
    schedule = _schedule()
    x, _ = _batch()
    plain = _model().eval()
    opts = perf.PerfOptions(channels_last=True)
    fast = perf.SamplingModel.build(_model(), opts)
    with torch.inference_mode():
        out_fast = p_sample(fast, x, 30, schedule, generator=torch.Generator().manual_seed(3))
    out_plain = p_sample(plain, x, 30, schedule, generator=torch.Generator().manual_seed(3))
    assert out_fast.dtype == torch.float32 and out_fast.is_contiguous()
    assert _rel(out_fast, out_plain) < 1e-5
    # bf16 inside the network only: the update stays fp32 and close
    bf = perf.SamplingModel.build(_model(), perf.PerfOptions(amp="bf16"))
    with torch.inference_mode():
        out_bf = p_sample(bf, x, 30, schedule, generator=torch.Generator().manual_seed(3))
    assert out_bf.dtype == torch.float32
    assert _rel(out_bf, out_plain) < 2e-2
    assert not any(k.startswith("_runner") for k in fast.state_dict())


def test_backend_flags_restore_threads_and_options_validate():
    before = torch.get_num_threads()
    with perf.backend_flags(perf.PerfOptions(threads=1), "cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="amp must be"):
        perf.PerfOptions(amp="fp8")
    assert perf.BASELINE.label() == "fp32 eager"
    assert perf.PerfOptions(amp="bf16", channels_last=True).label() == "amp=bf16 + channels_last"


def test_cpu_threads_follow_the_load(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert perf.cpu_threads(cores=2, load=0.0) == 2
    assert perf.cpu_threads(cores=2, load=1.2) == 1
    assert perf.cpu_threads(cores=2, load=7.0) == 1
    assert perf.cpu_threads(cores=8, load=2.4) == 6  # the idle cores
    assert perf.cpu_threads(cores=1, load=0.0) == 1
    assert 1 <= perf.cpu_threads() <= perf.default_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # an explicit choice wins over the load
    assert perf.cpu_threads() == perf.default_threads()


def test_loader_kwargs():
    assert perf.loader_kwargs("cpu", 0) == {"num_workers": 0, "pin_memory": False}
    kw = perf.loader_kwargs("cuda", 4)
    assert kw["pin_memory"] and kw["persistent_workers"] and kw["num_workers"] == 4
    with pytest.raises(ValueError, match="num_workers"):
        perf.loader_kwargs("cpu", -1)


def test_bf16_training_run_stays_within_seed_to_seed_variation():
    """30 steps of the tiny model: bf16 autocast ends at the fp32 loss much closer than another seed does."""

    def run(amp: str, seed: int) -> float:
        torch.manual_seed(seed)
        model = UNet(in_channels=C, channels=(16, 32), num_res_blocks=1)
        opt = perf.make_adamw(model.parameters(), lr=2e-3, weight_decay=1e-4)
        data = torch.rand(8, C, S, S, generator=torch.Generator().manual_seed(11)) * 2 - 1
        g = torch.Generator().manual_seed(seed)
        dtype = perf.resolve_amp_dtype("cpu", amp)
        losses = [train_step(model, opt, data, _schedule(), generator=g, amp_dtype=dtype) for _ in range(30)]
        return sum(losses[-15:]) / 15

    with perf.backend_flags(perf.PerfOptions(threads=1), "cpu"):  # tiny tensors: one thread is fastest
        fp32, bf16, other_seed = run("off", 0), run("bf16", 0), run("off", 1)
    assert abs(bf16 - fp32) < 0.5 * abs(other_seed - fp32), (fp32, bf16, other_seed)


def test_train_options_take_the_device_policy_unless_the_config_says_otherwise():
    from ddpm_ref.config import get_config, parse_value

    cfg = get_config("lfw-tiny")
    assert cfg.channels_last is None and cfg.compile is None  # None: the per-device policy
    cpu, cuda = perf.train_options(cfg, "cpu"), perf.train_options(cfg, "cuda")
    assert (cpu.channels_last, cpu.fused_adamw, cpu.cudnn_benchmark, cpu.compile) == (False,) * 4
    assert (cuda.channels_last, cuda.fused_adamw, cuda.cudnn_benchmark, cuda.compile) == (True, True, True, False)
    assert perf.recommended("cuda").replace(amp="auto") == cuda.replace(amp="auto")
    mine = perf.train_options(cfg.replace(channels_last=True, compile=False, threads=1), "cpu")
    assert mine.channels_last and not mine.compile and mine.threads == 1
    assert perf.train_options(cfg.replace(fused_adamw=False), "cuda").fused_adamw is False
    assert parse_value("channels_last", "auto") is None and parse_value("channels_last", "on") is True
    with pytest.raises(ValueError, match="threads"):
        cfg.replace(threads=-1)


def test_cpu_auto_precision_is_the_one_cpu_rule(monkeypatch):
    for native, dtype in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert perf.resolve_amp_dtype("cpu", "auto") is dtype
        assert perf.cpu_amp() == ("bf16" if native else "off")
    assert perf.resolve_amp_dtype("cpu", "off") is None


def test_use_cpu_threads_sets_and_reports_the_policy(monkeypatch):
    threads = torch.get_num_threads()
    notes: list[str] = []
    monkeypatch.setattr(perf, "cpu_threads", lambda: 1)
    try:
        assert perf.use_cpu_threads(log=notes.append) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert len(notes) == (1 if perf.default_threads() > 1 else 0)


def test_resolve_device_lives_below_the_trainer():
    import ddpm_ref.train

    assert ddpm_ref.train.resolve_device is perf.resolve_device
    assert perf.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        perf.resolve_device("gpu0")


def test_switches_name_what_is_on_besides_amp():
    assert perf.PerfOptions(amp="bf16").switches() == "none"
    opts = perf.PerfOptions(amp="auto", channels_last=True, fused_adamw=True)
    assert opts.switches() == "channels_last + fused_adamw"
