"""Image inputs: the `ImageSpec` models are built from, and the built-in LeNet-like conv trunk
(conv-pool-conv-pool-fc, as in the MultiMNIST experiments of Sener & Koltun 2018).

Images reach the model as uint8 tensors [N, C, H, W] (0..255; the data layer keeps them so, a quarter of the
memory of float32) or as float tensors already scaled to [0, 1]. The first module of every trunk scales them
to [0, 1] and normalises each channel with the training mean and std the spec carries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from multitask.models.layers import check_count, check_dropout, check_widths, mlp, mlp_out_dim


@dataclass(frozen=True)
class ImageSpec:
    """Shape of image inputs [C, H, W], and per-channel mean and std of the training pixels (in [0, 1])."""

    channels: int
    height: int
    width: int
    mean: Sequence[float] = field(default_factory=tuple)
    std: Sequence[float] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"images have 1 (grayscale) or 3 (RGB) channels, got {self.channels!r}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"image {name} must be an integer >= 1, got {v!r}")
        for name in ("mean", "std"):
            v = tuple(getattr(self, name))
            if v and len(v) != self.channels:
                raise ValueError(f"image {name} has {len(v)} values for {self.channels} channel(s)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"image std must be > 0 per channel, got {tuple(self.std)}")


class Normalize(nn.Module):
    """uint8 pixels -> [0, 1] floats, then (x - mean) / std per channel (identity where the spec has none)."""

    def __init__(self, spec: ImageSpec) -> None:
        super().__init__()
        c = spec.channels
        mean = torch.tensor(tuple(spec.mean) or (0.0,) * c, dtype=torch.float32).view(1, c, 1, 1)
        std = torch.tensor(tuple(spec.std) or (1.0,) * c, dtype=torch.float32).view(1, c, 1, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float() / 255.0 if not x.is_floating_point() else x
        return (x - self.mean) / self.std


def conv_output_size(spec: ImageSpec, conv_channels: Sequence[int], kernel_size: int) -> tuple[int, int]:
    """Height and width after the conv layers of `conv_channels` (each: `kernel_size`, no padding, then 2x2
    pooling); the options are checked, and an image too small for them is an error naming them."""
    check_widths("conv_channels", conv_channels)
    if not conv_channels:
        raise ValueError("conv_channels needs at least one conv layer, e.g. [10, 20]")
    check_count("kernel_size", kernel_size)
    h, w = spec.height, spec.width
    for _ in conv_channels:
        h, w = (h - kernel_size + 1) // 2, (w - kernel_size + 1) // 2
        if h < 1 or w < 1:
            raise ValueError(f"image size {spec.height}x{spec.width} is too small for {len(conv_channels)} "
                             f"conv layers of kernel_size {kernel_size} with 2x2 pooling (conv_channels "
                             f"{list(conv_channels)}); use larger images, fewer layers or a smaller kernel")
    return h, w


class ConvFeatures(nn.Module):
    """Normalize, then per entry of `conv_channels` a conv (`kernel_size`, no padding), 2x2 max-pool and ReLU;
    flattened to [N, out_dim]."""

    def __init__(self, spec: ImageSpec, conv_channels: Sequence[int] = (10, 20), kernel_size: int = 5) -> None:
        super().__init__()
        h, w = conv_output_size(spec, conv_channels, kernel_size)
        layers, c = [Normalize(spec)], spec.channels
        for out in conv_channels:
            layers += [nn.Conv2d(c, out, kernel_size), nn.MaxPool2d(2), nn.ReLU()]
            c = out
        layers.append(nn.Flatten())
        self.body = nn.Sequential(*layers)
        self.out_dim = c * h * w

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class ConvTrunk(nn.Module):
    """`ConvFeatures` then fully connected ReLU layers `hidden` (with BatchNorm1d when `batch_norm`): the
    LeNet-like trunk (default: 10 and 20 channels of 5x5 kernels, one 50-unit layer)."""

    def __init__(self, spec: ImageSpec, conv_channels: Sequence[int] = (10, 20), kernel_size: int = 5,
                 hidden: Sequence[int] = (50,), dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        check_dropout(dropout)
        self.features = ConvFeatures(spec, conv_channels, kernel_size)
        self.fc = mlp(self.features.out_dim, hidden, dropout=dropout, batch_norm=batch_norm)
        self.out_dim = mlp_out_dim(self.features.out_dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))
