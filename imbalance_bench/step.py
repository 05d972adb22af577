"""One optimiser step, fast on a GPU: autocast, channels_last, and the whole step replayed from a CUDA graph.

ResNet-32 at batch 128 is launch-bound: a few hundred small kernels per step, each shorter than
the host takes to launch it. Capturing forward, loss, backward and the optimiser step once in a
CUDA graph and replaying it costs one launch per step (PyTorch's "whole-network capture").
Which of these a run uses is its speed switches' choice (device.py).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch

log = logging.getLogger("imbench")

#: eager steps run before the graph is captured: they build the optimiser's momentum buffers
#: and let cuDNN pick its algorithms, so that capture records steady-state work. They are real
#: training steps on real batches, not a throw-away warm-up.
GRAPH_WARMUP_STEPS = 3


class Precision:
    """Autocast and (for float16) gradient scaling, both off unless `trainer.amp`."""

    def __init__(self, device: torch.device, amp: bool, dtype: str):
        self.device_type = device.type
        self.enabled = bool(amp)
        self.dtype = getattr(torch, dtype)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.enabled and self.dtype == torch.float16)

    def autocast(self, cache_enabled: bool = True):
        if not self.enabled:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=cache_enabled)


def to_memory_format(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def model_input(images: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """Normalised images in the model's dtype (float64 under trainer.dtype=float64) and memory format."""
    return to_memory_format(images.to(dtype), channels_last)


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Logits for the loss: at least float32 (autocast's bfloat16 / float16 ones are cast up)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class TrainStep:
    """forward -> loss -> backward -> optimiser step on one batch; returns the detached loss.

    With `cuda_graphs`, the first `GRAPH_WARMUP_STEPS` batches train eagerly on a side stream,
    the next one is captured, and every later batch of the same size replays the graph: its
    inputs are copied into static buffers first. The learning rate lives in a device tensor
    that the scheduler fills in place, so a captured step follows the schedule. A batch of
    another size (the last, short one of an epoch) or a change of class weights between None
    and a tensor (DRW) runs eagerly, or recaptures, respectively. Nothing in the graph depends
    on values read back to the host, so a replayed step computes what the eager one does.
    """

    def __init__(
        self, model, criterion, optimizer, precision: Precision, channels_last: bool, cuda_graphs: bool,
        compiled_model=None, ddp_module=None,
    ):
        self.model, self.criterion, self.optimizer, self.precision = model, criterion, optimizer, precision
        # in a DDP run: DistributedDataParallel around ModelWithLoss(model, criterion), whose
        # backward averages the gradients over the processes (eager steps only)
        self.ddp_module = ddp_module
        self.dtype = next(model.parameters()).dtype
        # the torch.compile'd model serves the first batch shape only (the one the graph replays);
        # other shapes run the plain model rather than wait for a recompilation
        self.compiled_model = compiled_model
        self.main_shape: tuple | None = None
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_key = None
        self.static: dict[str, torch.Tensor | None] = {}
        if cuda_graphs:
            learning_rates_on_device(optimizer)

    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None, loss_scale: float = 1.0
    ) -> torch.Tensor:
        """One step; the gradient is that of `loss_scale` x the loss (a DDP process's share of the
        global batch, see distributed.py), the returned loss is unscaled."""
        inputs = model_input(inputs, self.dtype, self.channels_last)
        if self.main_shape is None:
            self.main_shape = tuple(inputs.shape)
        if loss_scale != 1.0 or not self.cuda_graphs or tuple(inputs.shape) != self.main_shape:
            # a short last batch is not worth its own graph
            return self.eager(inputs, targets, weights, loss_scale)
        key = (tuple(targets.shape), targets.dtype, weights is None)
        if self.graph is not None and key == self.graph_key:
            return self.replay(inputs, targets, weights)
        if self.eager_steps < GRAPH_WARMUP_STEPS:
            return self.eager_on_side_stream(inputs, targets, weights)
        self.capture(key, inputs, targets, weights)
        return self.replay(inputs, targets, weights)

    def forward_backward(self, inputs, targets, weights, cache_enabled: bool = True, loss_scale: float = 1.0) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        if self.ddp_module is not None:
            loss = self.ddp_module(inputs, targets, weights)
        else:
            compiled = self.compiled_model is not None and tuple(inputs.shape) == self.main_shape
            with self.precision.autocast(cache_enabled=cache_enabled):
                logits = (self.compiled_model if compiled else self.model)(inputs)
            loss = self.criterion(upcast(logits), targets, weights)
        scaler = self.precision.scaler
        scaler.scale(loss if loss_scale == 1.0 else loss * loss_scale).backward()
        scaler.step(self.optimizer)
        scaler.update()
        return loss.detach()

    def eager(self, inputs, targets, weights, loss_scale: float = 1.0) -> torch.Tensor:
        self.eager_steps += 1
        return self.forward_backward(inputs, targets, weights, loss_scale=loss_scale)

    def eager_on_side_stream(self, inputs, targets, weights) -> torch.Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss = self.eager(inputs, targets, weights)
        torch.cuda.current_stream().wait_stream(side)
        return loss

    def capture(self, key, inputs, targets, weights) -> None:
        self.graph = None  # drop the old graph (and its memory pool) before recording a new one
        self.static = {
            "inputs": torch.empty_like(inputs),
            "targets": torch.empty_like(targets),
            "weights": None if weights is None else torch.empty_like(weights),
        }
        self.copy_in(inputs, targets, weights)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        # thread_local: a DataLoader's pin-memory thread may allocate pinned memory meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.static["loss"] = self.forward_backward(
                self.static["inputs"], self.static["targets"], self.static["weights"], cache_enabled=False
            )
        self.graph, self.graph_key = graph, key
        log.debug("captured the train step in a CUDA graph for batch shape %s", self.main_shape)

    def copy_in(self, inputs, targets, weights) -> None:
        self.static["inputs"].copy_(inputs)
        self.static["targets"].copy_(targets)
        if weights is not None:
            self.static["weights"].copy_(weights)

    def replay(self, inputs, targets, weights) -> torch.Tensor:
        self.copy_in(inputs, targets, weights)
        self.graph.replay()
        return self.static["loss"].clone()


class ModelWithLoss(torch.nn.Module):
    """The model and its loss as one module, for DistributedDataParallel to wrap: DDP then averages
    the gradients of the loss's learnable parameters (DFL's gamma) with the model's, so they stay
    the same on every process. Its buffers (PLM's histograms) are each process's own."""

    def __init__(self, model: torch.nn.Module, criterion: torch.nn.Module, precision: Precision):
        super().__init__()
        self.model, self.criterion, self.precision = model, criterion, precision

    def forward(self, inputs, targets, weights):
        with self.precision.autocast():
            logits = self.model(inputs)
        return self.criterion(upcast(logits), targets, weights)


def learning_rates_on_device(optimizer: torch.optim.Optimizer) -> None:
    """Hold each group's lr in a 0-d tensor on the parameters' device. LR schedulers fill such a
    tensor in place, so a step captured in a CUDA graph reads the current rate at replay."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(_as_float(group["lr"]), dtype=torch.float32, device=group["params"][0].device)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return _as_float(optimizer.param_groups[0]["lr"])


def _as_float(lr: float | torch.Tensor) -> float:
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)
