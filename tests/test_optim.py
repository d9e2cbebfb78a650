"""ciap_lib.optim: the optimizer and learning-rate schedule registries."""
import math

import pytest
import torch

from ciap_lib.config import TrainConfig
from ciap_lib.optim import OPTIMIZERS, SCHEDULERS, cosine_factor, create_optimizer, create_scheduler


def _lrs(name: str, **cfg) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = create_optimizer("adam", [p], lr=1.0)
    sched = create_scheduler(name, opt, TrainConfig.from_dict(cfg))
    out = []
    for _ in range(cfg.get("epochs", 10)):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_registries_build_what_they_name():
    p = [torch.nn.Parameter(torch.zeros(2))]
    for name, cls in OPTIMIZERS.items():
        opt = create_optimizer(name, p, lr=0.5, weight_decay=0.01)
        assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(ValueError, match=r"'sgd' is not one of \['adam', 'adamw'\]"):
        create_optimizer("sgd", p, lr=1.0)
    with pytest.raises(ValueError, match="'linear' is not one of"):
        create_scheduler("linear", create_optimizer("adam", p, lr=1.0), TrainConfig())
    assert set(SCHEDULERS) == {"step", "cosine", "constant"}


def test_step_is_the_original_steplr():
    assert _lrs("step", epochs=25, lr_step_size=10, lr_gamma=0.1) == pytest.approx(
        [1.0] * 10 + [0.1] * 10 + [0.01] * 5)
    assert _lrs("constant", epochs=4) == [1.0] * 4


def test_cosine_warms_up_then_decays_to_zero():
    lrs = _lrs("cosine", epochs=10, warmup_epochs=2)
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))           # strictly decreasing after the warmup
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert cosine_factor(10, 10, 2) == pytest.approx(0.0)          # would reach 0 after the last epoch
    assert _lrs("cosine", epochs=4, warmup_epochs=0)[0] == 1.0
