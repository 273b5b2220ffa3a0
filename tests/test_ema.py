"""The parameter EMA (ddpm_ref.ema): fixed decay and the warm-up min(decay, (1 + n)/(10 + n))."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpm_ref.ema import ema_state, load_ema_state, make_ema, warmup_decay


def _model(value: float) -> nn.Module:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def _weights(n: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, generator=g).tolist()


def _reference(values: list[float], decay: float, warmup: bool) -> float:
    """The EMA written out by hand: the first value is copied, update n (0-based) then uses d_n."""
    ema = values[0]
    for n, v in enumerate(values[1:]):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        ema = d * ema + (1 - d) * v
    return ema


def test_warmup_decay_ramps_up_and_caps():
    assert warmup_decay(0.995, 0) == pytest.approx(0.1)
    assert warmup_decay(0.995, 90) == pytest.approx(0.91)
    assert warmup_decay(0.995, 10_000) == 0.995
    ramp = [warmup_decay(0.999, n) for n in range(0, 20_000, 100)]
    assert all(a <= b for a, b in zip(ramp, ramp[1:], strict=False)) and ramp[-1] == 0.999


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_follows_the_recurrence(warmup: bool):
    values = _weights(300)
    model = _model(values[0])
    ema = make_ema(model, 0.99, warmup=warmup)
    for v in values:
        with torch.no_grad():
            model.weight.fill_(v)
        ema.update_parameters(model)
    got = float(ema.module.weight)
    assert got == pytest.approx(_reference(values, 0.99, warmup), rel=1e-5, abs=1e-6)
    other = _reference(values, 0.99, not warmup)
    assert abs(got - other) > 1e-3  # the two rules really differ over 300 updates


def test_warmup_forgets_the_first_weights_faster():
    # 200 updates at weight 1 after a start at 0: the fixed 0.995 average still holds e^(-1) of the start
    model = _model(0.0)
    fixed, warm = make_ema(model, 0.995), make_ema(model, 0.995, warmup=True)
    for e in (fixed, warm):
        e.update_parameters(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(200):
        fixed.update_parameters(model)
        warm.update_parameters(model)
    assert float(fixed.module.weight) < 0.7 and float(warm.module.weight) > 0.999


def test_warmup_resumes_from_the_stored_count():
    values = _weights(120)
    model = _model(values[0])
    whole = make_ema(model, 0.995, warmup=True)
    first = make_ema(model, 0.995, warmup=True)
    for i, v in enumerate(values):
        with torch.no_grad():
            model.weight.fill_(v)
        whole.update_parameters(model)
        if i < 60:
            first.update_parameters(model)
    state, n = ema_state(first)
    resumed = make_ema(_model(0.0), 0.995, warmup=True)
    load_ema_state(resumed, state, n)
    for v in values[60:]:
        with torch.no_grad():
            model.weight.fill_(v)
        resumed.update_parameters(model)
    assert float(resumed.module.weight) == pytest.approx(float(whole.module.weight), rel=1e-6)


def test_bad_decay_is_refused():
    with pytest.raises(ValueError, match="decay"):
        make_ema(_model(0.0), 1.0, warmup=True)
