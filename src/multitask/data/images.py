"""Image inputs: a user's table whose `image_column` holds paths of PNG/JPEG files (read with Pillow), and the
`ImagePreprocessor` saved with a run so that `predict` reads new images exactly as training did.

    data:
      name: table
      path: labels.csv            # image paths are relative to this file's folder (or absolute)
      image_column: path
      image_size: [32, 32]        # [height, width] every image is resized to; default: the first image's size
      channels: 1                 # 1 (grayscale) or 3 (RGB); default: the first image's (1 for L/LA/1/I modes)
      targets: {label: multiclass, damaged: binary}

Only the image is an input: the table's other columns are targets or ignored (the run log names the ignored
ones), and `features` / `categorical` are refused. Pixels are kept as uint8 [N, C, H, W] (a quarter of the
memory of float32); the model scales them to [0, 1] and normalises each channel with the training mean and
std (`multitask.models.conv.Normalize`). Rows are numbered from 1 below the header in every error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from multitask.data.dataset import DatasetBundle, MultiTaskData
from multitask.data.preprocessing import InputReport, TabularPreprocessor
from multitask.models.conv import ImageSpec

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _pillow() -> Any:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ValueError("reading image files needs Pillow: pip install 'multitask[images]' (or pip install Pillow)") \
            from None
    return Image, UnidentifiedImageError


def resolve(value: Any, base_dir: Path, where: str) -> Path:
    """The image file a cell names (relative to `base_dir`), or a ValueError naming `where` when it is empty,
    does not exist or is a folder."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
        raise ValueError(f"{where}: the image path is empty")
    p = Path(str(value).strip()).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not p.exists():
        raise ValueError(f"{where}: image file {p} does not exist")
    if not p.is_file():
        raise ValueError(f"{where}: {p} is a directory, not an image file")
    return p


def read_image(path: Path, height: int | None, width: int | None, channels: int | None,
               where: str) -> np.ndarray:
    """One image as uint8 [C, H, W], converted to `channels` and resized (bilinear) to height x width (None:
    as the file is); a ValueError naming `where` and the file when Pillow cannot read it."""
    Image, Unidentified = _pillow()
    try:
        with Image.open(path) as img:
            c = channels or (1 if img.mode in GRAY_MODES else 3)
            img = img.convert("L" if c == 1 else "RGB")
            if height and width and img.size != (width, height):
                img = img.resize((width, height), Image.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
    except Unidentified:
        raise ValueError(f"{where}: {path} is not an image Pillow can read (PNG, JPEG, ...)") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or damaged files
        raise ValueError(f"{where}: {path} cannot be read as an image ({' '.join(str(e).split())[:120]})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def read_images(df: pd.DataFrame, column: str, base_dir: Path, height: int, width: int, channels: int,
                source: str) -> torch.Tensor:
    """uint8 [N, C, H, W] of every row's image; every path is checked before any image is decoded, so a
    missing file is reported at once; errors name `source`, the row and the column."""
    prefix = f"{source}, " if source else ""
    if column not in df.columns:
        raise ValueError(f"{prefix}image column {column!r} is not in the table; it has "
                         f"{', '.join(map(str, df.columns[:12]))}")
    paths = [resolve(v, base_dir, f"{prefix}row {i + 1}, column {column!r}") for i, v in enumerate(df[column])]
    out = np.empty((len(paths), channels, height, width), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = read_image(p, height, width, channels, f"{prefix}row {i + 1}, column {column!r}")
    return torch.from_numpy(out)


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images [N, C, H, W] in [0, 1] units, in chunks (no float copy of the
    whole set); a std of 0 (blank images) is reported as 1."""
    c = images.shape[1]
    total, sq, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / max(count, 1)
    std = (sq / max(count, 1) - mean * mean).clamp_min(0).sqrt()
    return tuple(float(m) for m in mean), tuple(float(s) if s > 1e-6 else 1.0 for s in std)


@dataclass
class ImagePreprocessor:
    """How a table's image column becomes the model's input; saved as preprocessor.json (kind: image)."""

    image_column: str
    height: int
    width: int
    channels: int
    mean: Sequence[float] = field(default_factory=tuple)
    std: Sequence[float] = field(default_factory=tuple)
    base_dir: Path = Path(".")  # where relative image paths start (the table's folder); not saved
    kind = "image"

    def transform(self, df: pd.DataFrame, source: str = "") -> torch.Tensor:
        """uint8 [N, C, H, W] of the images `df[image_column]` names."""
        return read_images(df, self.image_column, self.base_dir, self.height, self.width, self.channels, source)

    def transform_with_report(self, df: pd.DataFrame) -> tuple[torch.Tensor, InputReport]:
        """`transform` and an empty report: the same interface as `TabularPreprocessor` for `predict` (pixels
        have no categories, and every value is in [0, 255])."""
        return self.transform(df), InputReport()

    @property
    def schema(self) -> ImageSpec:
        return ImageSpec(self.channels, self.height, self.width, tuple(self.mean), tuple(self.std))

    def to_dict(self) -> dict:
        return {"kind": "image", "image_column": self.image_column, "height": self.height, "width": self.width,
                "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "ImagePreprocessor":
        return cls(str(d["image_column"]), int(d["height"]), int(d["width"]), int(d["channels"]),
                   tuple(map(float, d["mean"])), tuple(map(float, d["std"])))


def load_preprocessor(path: str | Path) -> Any:
    """The preprocessing a run saved: an ImagePreprocessor (kind: image) or a TabularPreprocessor (no kind,
    as every run before image inputs wrote it)."""
    d = json.loads(Path(path).read_text())
    if d.get("kind", "table") == "image":
        return ImagePreprocessor.from_dict(d)
    return TabularPreprocessor.from_dict(d)


def planned_spec(path: str | Path, image_column: str, image_size: Sequence[int] | None,
                 channels: int | None) -> ImageSpec:
    """The input shape an image table will have (without normalisation statistics), known before any image
    is decoded: the configured size and channels, or those of the first row's image (only its header is read)."""
    from multitask.data.table import read_table

    path = Path(path)
    df = read_table(path, limit=1)
    if image_column not in df.columns:
        raise ValueError(f"{path}: image column {image_column!r} is not in the table; it has "
                         f"{', '.join(map(str, df.columns[:12]))}")
    if image_size is not None and channels is not None:
        return ImageSpec(int(channels), int(image_size[0]), int(image_size[1]))
    where = f"{path}, row 1, column {image_column!r}"
    first = resolve(df[image_column].iloc[0], path.parent, where)
    Image, Unidentified = _pillow()
    try:
        with Image.open(first) as img:
            w, h = img.size
            c = 1 if img.mode in GRAY_MODES else 3
    except Unidentified:
        raise ValueError(f"{where}: {first} is not an image Pillow can read (PNG, JPEG, ...)") from None
    except OSError as e:
        raise ValueError(f"{where}: {first} cannot be read as an image ({e})") from None
    h, w = (int(image_size[0]), int(image_size[1])) if image_size is not None else (h, w)
    return ImageSpec(int(channels) if channels is not None else c, h, w)


def load_image_table(path: str | Path, image_column: str, targets: dict[str, Any],
                     image_size: Sequence[int] | None = None, channels: int | None = None,
                     split: dict[str, Any] | None = None, limit: int | None = None) -> DatasetBundle:
    """The bundle of a table of image paths and targets: inputs uint8 [N, C, H, W], targets as for any table
    (`multitask.data.targets`), normalisation statistics of the training images in the preprocessor."""
    from multitask.data.table import read_table, split_rows
    from multitask.data.targets import codecs_for, target_columns

    path = Path(path)
    df = read_table(path, limit=limit)
    split = dict(split or {})
    codecs, notes = codecs_for(df, targets)
    if image_column in target_columns(codecs):
        raise ValueError(f"{path}: the image column {image_column!r} is also a target")
    spec = planned_spec(path, image_column, image_size, channels)
    used = target_columns(codecs) | {image_column} | ({split["column"]} if split.get("column") else set())
    ignored = [str(c) for c in df.columns if c not in used]
    if ignored:
        notes.append(f"columns ignored (an image table's only input is its image): {', '.join(ignored)}")
    notes.append(f"images: {spec.channels} channel(s), resized to {spec.height}x{spec.width}")
    parts = split_rows(df, split, path)
    images = read_images(df, image_column, path.parent, spec.height, spec.width, spec.channels, str(path))
    fit_rows = df.iloc[parts["train"].numpy()]
    for codec in codecs:
        codec.fit(fit_rows)
    full = MultiTaskData(images, {codec.name: codec.encode(df) for codec in codecs})
    train = full.subset(parts["train"])
    mean, std = channel_stats(train.inputs)
    pre = ImagePreprocessor(image_column, spec.height, spec.width, spec.channels, mean, std, path.parent)
    return DatasetBundle(
        "table", [codec.task() for codec in codecs], train, full.subset(parts["val"]), full.subset(parts["test"]),
        pre, info={"rows": {k: len(v) for k, v in parts.items()}, "source": str(path), "codecs": codecs,
                   "notes": notes})
