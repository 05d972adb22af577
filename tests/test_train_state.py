"""TrainState: a checkpoint is written and read back in one place, symmetrically."""

import torch

from imbalance_bench.checkpoint import EpochPosition, Generators, History, TrainState
from imbalance_bench.losses import DualFocalLoss


def state(seed: int) -> TrainState:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    criterion = DualFocalLoss(alpha=1.0, beta=1.0, gamma=2.0, rho=1.0, learnable=True, gamma_min=0.0, gamma_max=5.0)
    return TrainState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), criterion,
                      Generators.seeded(seed, torch.device("cpu")), History(monitor="top1"))


def flat(tree) -> list:
    """Every leaf of a state dict, tensors as lists, in order."""
    if isinstance(tree, dict):
        return [(k, v) for key in tree for k, v in flat(tree[key]) for k in [f"{key}.{k}" if k else key]]
    if isinstance(tree, (list, tuple)):
        return [(f"{i}.{k}" if k else str(i), v) for i, item in enumerate(tree) for k, v in flat(item)]
    return [("", tree.tolist() if isinstance(tree, torch.Tensor) else tree)]


def test_load_state_dict_inverts_state_dict():
    trained = state(0)
    loss = trained.model(torch.randn(5, 3)).pow(2).mean() + trained.criterion.gamma_logit.sum()
    loss.backward()
    trained.optimizer.step()
    trained.scheduler.step()
    trained.generators.augment.manual_seed(123)
    trained.history.epochs.append({"epoch": 1, "top1": 0.5})
    trained.history.steps, trained.epoch = 7, 1
    trained.position = EpochPosition(1, 3, trained.generators.shuffle.get_state(), 2.5, 12)
    saved = trained.state_dict(config={"seed": 0})

    fresh = state(1)  # other weights, other streams
    assert flat(fresh.state_dict(config={"seed": 0})) != flat(saved)
    fresh.load_state_dict(saved)
    assert flat(fresh.state_dict(config={"seed": 0})) == flat(saved)
    assert fresh.epoch == 1 and fresh.position.batches_done == 3 and fresh.history.steps == 7
    assert torch.rand(2, generator=fresh.generators.augment).tolist() == \
        torch.rand(2, generator=trained.generators.augment).tolist()
