"""Re-drawing a torch module's learned parameters for the model-parameter randomisation test:
reproducibly for a seed, without touching the global random state."""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Tuple

import torch
from torch import nn


def own_float_parameters(module: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """The floating-point parameters a module owns itself (not its children's)."""
    return [(n, p) for n, p in module.named_parameters(recurse=False) if p.is_floating_point()]


def reinitialise(module: nn.Module, seed: int, scripted: bool) -> None:
    """Re-draw one module's own parameters in place, reproducibly for ``seed``, leaving the global
    random state as it was: by its own ``reset_parameters()`` (the initialisation it was built
    with) where it has one, else each parameter from N(0, its std) and running statistics reset."""
    reset = None if scripted else getattr(module, "reset_parameters", None)
    if callable(reset):
        with seeded(module, seed):
            reset()
        return
    generator = torch.Generator().manual_seed(seed)
    for _, p in own_float_parameters(module):
        std = float(p.detach().double().std(correction=0)) if p.numel() else 0.0
        draw = torch.randn(p.shape, generator=generator, dtype=torch.float64) * std
        p.copy_(draw.to(device=p.device, dtype=p.dtype))
    for name, buffer in module.named_buffers(recurse=False):  # a BatchNorm's running statistics
        if name in ("running_mean", "running_var", "num_batches_tracked"):
            buffer.fill_(1 if name == "running_var" else 0)


@contextlib.contextmanager
def seeded(module: nn.Module, seed: int) -> Iterator[None]:
    """The default generators of the devices ``module`` lives on seeded with ``seed`` inside, restored
    after. Not ``torch.manual_seed``: without CUDA started, it queues a seed for every GPU that would
    replace the user's own when CUDA starts later."""
    tensors = list(module.parameters()) + list(module.buffers())
    cuda = sorted({t.device.index if t.device.index is not None else torch.cuda.current_device()
                   for t in tensors if t.device.type == "cuda"})
    other = any(t.device.type not in ("cpu", "cuda") for t in tensors)
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        if other:  # another accelerator's generator: only torch.manual_seed reaches it
            torch.manual_seed(seed)
        yield
