"""BatchNorm whose batch statistics span every process of a DDP run.

With the batch cut across processes, per-process BatchNorm would normalise each part by its own
mean and variance, and a DDP run would train a different network from a one-process run on the
same global batch. CUDA uses PyTorch's `nn.SyncBatchNorm`; it refuses CPU tensors, so on the CPU
(gloo) `AllReduceBatchNorm2d` sums the statistics with a differentiable all-reduce instead
(Ioffe & Szegedy 2015's normalisation over the whole mini-batch). Both keep BatchNorm's
parameter and buffer names, so checkpoints move freely between one process and several.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger("imbench")


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; its gradient is the sum of the processes' gradients (each process's
    input reaches every process's output)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d normalising by the mean and (biased) variance of the global batch in training;
    the running variance gets the unbiased global variance, as BatchNorm2d's does. Eval mode, and
    a single process, are plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        # the statistics in float64: BatchNorm2d's float32 sums lose ~1e-3 of a channel's scale where
        # its mean is large against its spread (the blank borders of digits); then the normalisation
        # in the input's precision
        x64 = x.double()
        count = x64.new_tensor([x64.numel() / x64.shape[1]])
        # two passes (mean, then squared deviations) as BatchNorm2d computes them, each one all-reduce
        sums = all_reduce(torch.cat([x64.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        var = all_reduce((x64 - mean.view(1, -1, 1, 1)).square().sum(dims)) / n
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for a float64 model
        y = x.to(dtype) * scale.to(dtype).view(1, -1, 1, 1) + shift.to(dtype).view(1, -1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return y.to(x.dtype)


def synchronize_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with its BatchNorm layers computing their statistics over all processes (see the
    module doc). On CUDA timm's converter, which also keeps the activation of timm's fused
    BatchNorm+activation layers; on the CPU BatchNorm2d only, with a warning for other kinds."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    model = _convert(model)
    others = sorted({type(m).__name__ for m in model.modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, AllReduceBatchNorm2d)})
    if others:
        log.warning("BatchNorm layers of type %s are not synchronised across processes on the CPU: each "
                    "normalises by its own part of the batch", ", ".join(others))
    return model


def _convert(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        replacement = AllReduceBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
            **_factory_kwargs(module),
        )
        replacement.load_state_dict(module.state_dict())
        replacement.train(module.training)
        return replacement
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module


def _factory_kwargs(module: nn.Module) -> dict:
    tensors = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
    return {"device": tensors[0].device, "dtype": tensors[0].dtype} if tensors else {}
