"""Lesson 8's outcome from the command line's recipe: the digits-cfg preset, trained as ``train --preset digits-cfg``
does, guides samples a classifier recognises (slow: minutes of CPU)."""

from __future__ import annotations

import pytest
import torch

import ddpm_ref as R

pytestmark = pytest.mark.slow


def test_digits_cfg_preset_reaches_the_lesson_outcome(tmp_path) -> None:
    """The digits-cfg preset (the command line's recipe, 930 steps) guided at w = 3: a logistic regression fitted on
    the real training digits labels ≥ 90 % of the samples asked for each digit as that digit (20 per digit)."""
    from sklearn.linear_model import LogisticRegression

    from ddpm_ref.config import get_config
    from ddpm_ref.train import Trainer

    trainer = Trainer(get_config("digits-cfg"), tmp_path, progress=False, write_outputs=False)
    trainer.fit()
    x, y = R.digits("train")
    classifier = LogisticRegression(max_iter=3000).fit(x.flatten(1).numpy(), y.numpy())
    asked = torch.arange(10).repeat_interleave(20)
    samples = R.ddim_sample(R.GuidedModel(trainer.ema.module.eval(), asked, 3.0), trainer.schedule,
                            (len(asked), 1, 8, 8), steps=25, generator=torch.Generator().manual_seed(2), progress=False)
    predicted = torch.as_tensor(classifier.predict(samples.flatten(1).numpy()))
    accuracy = [float((predicted[asked == c] == c).double().mean()) for c in range(10)]
    assert min(accuracy) >= 0.9, accuracy
