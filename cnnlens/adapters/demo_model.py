"""The demo's model: a small torchvision DenseNet trained on the synthetic circles-and-squares
images (``cnnlens.adapters.synthetic``), as in the seeds' DenseNet example, small enough to
train on two idle CPU cores in under 20 seconds to 100% validation accuracy.

``build_model`` makes the network, ``train`` fits it (seeded, deterministic on a given machine
and thread count), ``evaluate`` measures accuracy and ``train_demo`` does all of it with the
demo's recipe. Inputs are the normalised images of ``synthetic.normalize`` (float32
(N, 3, H, W)).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import DenseNet

from . import synthetic

#: The demo's architecture: two dense blocks (one transition), so a 64 px input leaves an
#: 8 x 8 last spatial layer (the stem divides by 4, the transition by 2) for the CAM family.
DEFAULT_ARCH: Dict[str, Any] = dict(growth_rate=12, block_config=(4, 4), num_init_features=24, bn_size=4)

#: The demo's recipe (``train_demo``): ``make_shapes(n, size)``, 80% trained on and 20% held out
#: for validation, ``train(model, data, epochs, batch_size, lr, noise=noise)``. About 17 s on two
#: idle CPU cores (250 steps), 100% validation accuracy on seeds 0-4.
DEMO_TRAINING: Dict[str, Any] = dict(n=4000, size=64, epochs=5, batch_size=64, lr=4e-3, noise=0.2,
                                     weight_decay=1e-2)

Data = Union["synthetic.ShapesData", Tuple[np.ndarray, np.ndarray]]


def build_model(num_classes: int = 2, seed: Optional[int] = None, **arch: Any) -> DenseNet:
    """A small ``torchvision.models.DenseNet`` (``DEFAULT_ARCH``, overridable by keyword:
    ``growth_rate``, ``block_config``, ``num_init_features``, ``bn_size``, ``drop_rate``).

    ``seed``: initialise the weights from this seed without touching torch's global random
    state (None: from the global state, as torchvision does).
    """
    config = dict(DEFAULT_ARCH)
    config.update(arch)
    if seed is None:
        return DenseNet(num_classes=num_classes, **config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return DenseNet(num_classes=num_classes, **config)


def _as_inputs(data: Data) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """(images, labels, is_uint8): uint8 (N, H, W, 3) images stay uint8 (normalised per batch,
    which saves memory); float images are taken as already normalised (N, 3, H, W)."""
    if isinstance(data, synthetic.ShapesData):
        images, labels = data.images, data.labels
    else:
        images, labels = data
    images = np.asarray(images)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if images.dtype == np.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got {images.shape}")
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), labels, True
    if images.ndim != 4:
        raise ValueError(f"float images must be (N, C, H, W), got {images.shape}")
    return torch.as_tensor(images, dtype=torch.float32), labels, False


def _normaliser(channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    mean = torch.tensor(synthetic.MEAN, dtype=torch.float32).view(1, -1, 1, 1)[:, :channels]
    std = torch.tensor(synthetic.STD, dtype=torch.float32).view(1, -1, 1, 1)[:, :channels]
    scale = 1.0 / (255.0 * std)
    shift = mean / std
    return lambda batch: batch.float() * scale - shift


def _identity(batch: torch.Tensor) -> torch.Tensor:
    return batch


def _augment(batch: torch.Tensor, generator: torch.Generator, noise: float) -> torch.Tensor:
    """Random horizontal / vertical flips and transposes per image (the dihedral group of the
    square: squares stay squares, circles stay circles), and Gaussian pixel noise of a random
    std in [0, ``noise``] per image (in [0, 1] pixel units)."""
    n = batch.shape[0]
    if noise > 0:
        std = torch.tensor(synthetic.STD, dtype=torch.float32).view(1, -1, 1, 1)[:, :batch.shape[1]]
        sigma = torch.rand(n, 1, 1, 1, generator=generator) * noise / std
        batch = batch + sigma * torch.randn(batch.shape, generator=generator)
    flags = torch.rand(n, 3, generator=generator) < 0.5
    batch = batch.clone()
    for axis, dims in enumerate(((3,), (2,), None)):
        idx = flags[:, axis].nonzero().flatten()
        if len(idx):
            part = batch[idx]
            batch[idx] = part.transpose(2, 3) if dims is None else part.flip(dims)
    return batch


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 256) -> float:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, len(labels), batch_size):
                batch = prepare(images[start:start + batch_size]).to(device)
                pred = model(batch).argmax(dim=1).cpu()
                correct += int((pred == labels[start:start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(1, len(labels))


def evaluate(model: nn.Module, x: Any, labels: Any, batch_size: int = 256) -> float:
    """Accuracy of ``model`` on images ``x`` (normalised float32 (N, 3, H, W), or uint8
    (N, H, W, 3) which is normalised here) against ``labels`` (N,). Runs in eval mode without
    gradients and restores the model's mode."""
    images, target, raw = _as_inputs((x, labels))
    return _accuracy(model, images, target, _normaliser(images.shape[1]) if raw else _identity, batch_size)


def split(n: int, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) index arrays over ``range(n)``."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train(model: nn.Module, data: Data, epochs: int = 5, batch_size: int = 64, lr: float = 4e-3,
          seed: int = 0, progress: Optional[Callable[[int, int], Any]] = None, *,
          val: Optional[Data] = None, val_fraction: float = 0.2, weight_decay: float = 1e-2,
          augment: bool = True, noise: float = 0.2) -> Dict[str, Any]:
    """Train ``model`` in place on ``data`` (a ``ShapesData``, or ``(images, labels)`` with uint8
    (N, H, W, 3) or normalised float32 (N, 3, H, W) images) with AdamW and a one-cycle learning
    rate schedule peaking at ``lr`` (AdamW's own default weight decay, 1e-2: it made the
    gradient maps steadier across seeds than 1e-4 did).

    ``augment``: each training image is randomly flipped and transposed (the square's
    symmetries) and gets Gaussian pixel noise of a random std in [0, ``noise``] ([0, 1] pixel
    units, scaled by ``synthetic.STD``). The noise makes the model's gradients meaningful on the
    noisy copies SmoothGrad feeds it (its default noise of 15% of the value range is 0.15 in
    pixel units here); without it SmoothGrad's maps scatter over the background.

    Validation on ``val`` when given, else on a seeded ``val_fraction`` of ``data`` held out
    from training (its indices are returned as ``val_indices``). ``progress(step, total)`` is
    called after every optimisation step. Deterministic given ``seed`` on one machine and thread
    count (seeded shuffling and augmentation, deterministic algorithms).

    Returns ``dict(accuracy=final validation accuracy, seconds=wall time, history=[per epoch:
    epoch, loss, train_accuracy, val_accuracy, seconds], train_indices, val_indices)``; the
    model is left in eval mode.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    images, labels, raw = _as_inputs(data)
    if val is None:
        train_idx, val_idx = split(len(labels), val_fraction, seed)
        val_images, val_labels = images[torch.from_numpy(val_idx)], labels[torch.from_numpy(val_idx)]
        images, labels = images[torch.from_numpy(train_idx)], labels[torch.from_numpy(train_idx)]
        val_raw = raw
    else:
        train_idx, val_idx = np.arange(len(labels)), np.zeros(0, dtype=np.int64)
        val_images, val_labels, val_raw = _as_inputs(val)
    if len(labels) == 0:
        raise ValueError("no training images left after the validation split")
    prepare = _normaliser(images.shape[1]) if raw else _identity
    val_prepare = _normaliser(val_images.shape[1]) if val_raw else _identity
    device = next(model.parameters()).device

    generator = torch.Generator().manual_seed(int(seed))
    steps_per_epoch = (len(labels) + batch_size - 1) // batch_size
    total = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total,
                                                   pct_start=0.25, div_factor=10.0, final_div_factor=100.0)
    history: List[Dict[str, float]] = []
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    start = time.perf_counter()
    step = 0
    try:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(labels), generator=generator)
            loss_sum, correct = 0.0, 0
            for b in range(steps_per_epoch):
                idx = order[b * batch_size:(b + 1) * batch_size]
                batch = prepare(images[idx])
                if augment:
                    batch = _augment(batch, generator, noise)
                target = labels[idx].to(device)
                logits = model(batch.to(device))
                loss = F.cross_entropy(logits, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == target).sum())
                step += 1
                if progress is not None:
                    progress(step, total)
            val_acc = _accuracy(model, val_images, val_labels, val_prepare) if len(val_labels) else float("nan")
            history.append(dict(epoch=epoch + 1, loss=loss_sum / len(labels), train_accuracy=correct / len(labels),
                                val_accuracy=val_acc, seconds=time.perf_counter() - start))
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)
        model.eval()
    return dict(accuracy=history[-1]["val_accuracy"], seconds=time.perf_counter() - start, history=history,
                train_indices=train_idx, val_indices=val_idx)


def train_demo(seed: int = 0, progress: Optional[Callable[[int, int], Any]] = None,
               **overrides: Any) -> Tuple[DenseNet, "synthetic.ShapesData", Dict[str, Any]]:
    """The demo's model, data and training result with the ``DEMO_TRAINING`` recipe (any of its
    keys overridable by keyword): ``(model, data, result)``, the model in eval mode, ``data``
    the whole generated set (``result["val_indices"]`` picks the held-out part)."""
    recipe = dict(DEMO_TRAINING)
    unknown = set(overrides) - set(recipe)
    if unknown:
        raise TypeError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(recipe)}")
    recipe.update(overrides)
    data = synthetic.make_shapes(recipe["n"], size=recipe["size"], seed=seed)
    model = build_model(seed=seed)
    result = train(model, data, epochs=recipe["epochs"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                   seed=seed, progress=progress, noise=recipe["noise"], weight_decay=recipe["weight_decay"])
    return model, data, result
