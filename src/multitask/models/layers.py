"""Building blocks: an MLP and an encoder for tabular inputs (numeric columns + categorical embeddings)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn


# The defaults of the table builders of independent, hard_sharing, mmoe, cgc and ple (measured on census-income,
# benchmarks/architectures.md "Embedding and BatchNorm choices": +0.002-0.003 income AUC over PyTorch's N(0, 1)
# embeddings without BatchNorm, 3 seeds each): embeddings drawn N(0, EMBEDDING_STD^2), Linear-BatchNorm-ReLU layers.
EMBEDDING_STD = 1e-4


@dataclass(frozen=True)
class InputSchema:
    """Shape of tabular inputs: how many numeric columns and the vocabulary size of each categorical one;
    optionally the columns' names (numeric ones, indicators included, then categorical ones)."""

    num_features: int
    cat_cardinalities: Sequence[int] = field(default_factory=tuple)
    names: Sequence[str] = field(default_factory=tuple)


class BatchNorm1d(nn.BatchNorm1d):
    """`nn.BatchNorm1d` that normalises a training batch of a single row with the running statistics instead of
    refusing it (a last batch of one row happens whenever the training rows are a multiple of the batch size
    plus one); otherwise identical, with the same state dict."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1 and self.track_running_stats:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            False, 0.0, self.eps)
        return super().forward(x)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None = None, dropout: float = 0.0,
        option: str = "hidden", batch_norm: bool = False) -> nn.Sequential:
    """Linear-ReLU(-Dropout) layers (Linear-BatchNorm1d-ReLU(-Dropout) with `batch_norm`); a final Linear to
    `out_dim` without activation or normalisation when it is given. `option` is the name errors give to
    `hidden` (the config field it came from)."""
    check_widths(option, hidden)
    check_dropout(dropout)
    check_flag("batch_norm", batch_norm)
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if batch_norm:
            layers.append(BatchNorm1d(h))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def task_heads(tasks: Sequence, in_dim: int, head_hidden: Sequence[int], dropout: float = 0.0) -> nn.ModuleDict:
    """One MLP head per task (`mlp` of `head_hidden`, then the task's outputs), keyed by task name."""
    return nn.ModuleDict({t.name: mlp(in_dim, head_hidden, t.out_dim, dropout=dropout, option="head_hidden")
                          for t in tasks})


def check_widths(option: str, widths: Sequence[int]) -> None:
    """Layer widths are positive integers; the error names the option and the bad entry."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise ValueError(f"{option}: expected a list of layer widths, got {widths!r}")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"{option}: layer widths must be integers >= 1, got {list(widths)!r}")


def check_count(option: str, value: int) -> None:
    """An integer >= 1 (not a bool); the error names the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be an integer >= 1, got {value!r}")


def check_dropout(dropout: float) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")


def check_flag(option: str, value: bool) -> None:
    """A true/false option (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{option} must be true or false, got {value!r}")


def mlp_out_dim(in_dim: int, hidden: Sequence[int]) -> int:
    return hidden[-1] if hidden else in_dim


class TabularEncoder(nn.Module):
    """Concatenates numeric columns with one learned embedding per categorical column.

    Accepts ``{"num": float[N, d], "cat": long[N, c]}`` or a plain float tensor of numeric columns.
    ``embedding_width="per_column"`` (default) gives a column ``min(embedding_dim, (cardinality + 1) // 2)``
    dimensions so tiny vocabularies stay small; ``"same"`` gives every column `embedding_dim`.
    ``embedding_std=None`` keeps PyTorch's N(0, 1) initialisation; a number draws N(0, std^2) instead (small
    values such as 1e-4 start every category near zero, as torch-rechub does).
    """

    def __init__(self, schema: InputSchema, embedding_dim: int = 8, embedding_std: float | None = None,
                 embedding_width: str = "per_column") -> None:
        super().__init__()
        check_count("embedding_dim", embedding_dim)
        if embedding_width not in ("per_column", "same"):
            raise ValueError(f"embedding_width must be 'per_column' or 'same', got {embedding_width!r}")
        if embedding_std is not None and (isinstance(embedding_std, bool) or not isinstance(embedding_std, (int, float))
                                          or not 0 < embedding_std < float("inf")):
            raise ValueError(f"embedding_std must be a number > 0 (or null for PyTorch's N(0, 1)), got {embedding_std!r}")
        self.schema = schema

        def width(card: int) -> int:
            return embedding_dim if embedding_width == "same" else max(1, min(embedding_dim, (card + 1) // 2))

        self.embeddings = nn.ModuleList(nn.Embedding(card, width(card)) for card in schema.cat_cardinalities)
        if embedding_std is not None:
            for e in self.embeddings:
                nn.init.normal_(e.weight, 0.0, float(embedding_std))
        self.out_dim = schema.num_features + sum(e.embedding_dim for e in self.embeddings)

    def forward(self, inputs: Tensor | dict[str, Tensor]) -> Tensor:
        if isinstance(inputs, Tensor):
            return inputs
        parts = []
        if self.schema.num_features:
            parts.append(inputs["num"])
        if len(self.embeddings):
            cat = inputs["cat"]
            parts.extend(emb(cat[:, j]) for j, emb in enumerate(self.embeddings))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


class TabularMLP(nn.Module):
    """Encoder + MLP: the built-in trunk for tabular data (see `TabularEncoder` for the embedding options and
    `mlp` for `batch_norm`)."""

    def __init__(self, schema: InputSchema, hidden: Sequence[int], embedding_dim: int = 8, dropout: float = 0.0,
                 embedding_std: float | None = None, embedding_width: str = "per_column",
                 batch_norm: bool = False):
        super().__init__()
        self.encoder = TabularEncoder(schema, embedding_dim, embedding_std, embedding_width)
        self.body = mlp(self.encoder.out_dim, hidden, dropout=dropout, batch_norm=batch_norm)
        self.out_dim = mlp_out_dim(self.encoder.out_dim, hidden)

    def forward(self, inputs: Tensor | dict[str, Tensor]) -> Tensor:
        return self.body(self.encoder(inputs))
