"""Learning-rate schedules (imbalance_bench/schedulers.py)."""

import pytest
import torch

from imbalance_bench.schedulers import warmup_cosine, warmup_cosine_factor, warmup_multistep, warmup_multistep_factor


def test_cifar_recipe_schedule():
    f = lambda e: warmup_multistep_factor(e, 5, [160, 180], 0.01)  # noqa: E731
    assert [f(e) for e in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert f(5) == 1.0 and f(159) == 1.0
    assert f(160) == pytest.approx(0.01) and f(179) == pytest.approx(0.01)
    assert f(180) == pytest.approx(1e-4) and f(199) == pytest.approx(1e-4)


def test_cosine_shape():
    factors = [warmup_cosine_factor(e, 0, 4, 0.0) for e in range(4)]
    assert factors == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)  # the last epoch still trains
    assert warmup_cosine_factor(4, 0, 4, 0.1) == pytest.approx(0.1)             # reached at epoch `total`
    assert warmup_cosine_factor(0, 2, 10, 0.0) == 0.5 and warmup_cosine_factor(1, 2, 10, 0.0) == 1.0


def test_main_job_lr_sequence(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg()
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.optimizer.lr)
    sched = instantiate(cfg.scheduler)(optimizer=opt, total_epochs=cfg.trainer.epochs)
    lrs = []
    for _ in range(cfg.trainer.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(cfg.optimizer.lr)
    assert all(a > b > 0 for a, b in zip(lrs, lrs[1:]))


def test_scheduler_drives_optimizer_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = warmup_multistep(opt, total_epochs=4, warmup_epochs=2, milestones=[3], gamma=0.1)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.01])
    opt2 = torch.optim.SGD([param], lr=1.0)
    assert isinstance(warmup_cosine(opt2, total_epochs=3, warmup_epochs=0, min_lr_factor=0.0), torch.optim.lr_scheduler.LambdaLR)
