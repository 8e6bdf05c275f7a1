"""Multi-Fashion: two Fashion-MNIST items on one 36x36 canvas, built the way Sener & Koltun (NeurIPS 2018)
built MultiMNIST; task `left` is the class of the item shifted towards the top-left, `right` of the one
shifted towards the bottom-right.

Construction (deterministic from `seed`): every source image is the left item of one composite; its
partner (the right item) is drawn by a seeded permutation of the same split. A 28x28 item centred on the
36x36 canvas would have its corner at (4, 4); the left item is moved up and left by 1..4 px (each axis on its
own, uniformly), the right item down and right by 1..4 px, and where they overlap the brighter pixel wins.
Train composites come from the 60,000 training images (split into train/val by `val_fraction`), test ones
from the 10,000 test images. Pixels stay uint8 (70,000 x 36 x 36 = 91 MB); the model scales them per batch.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from multitask.data.dataset import DatasetBundle, MultiTaskData, split_indices
from multitask.data.images import ImagePreprocessor, channel_stats
from multitask.data.debian import find_fashion_mnist
from multitask.tasks import Task

CANVAS = 36
ITEM = 28
MAX_SHIFT = 4
CENTRE = (CANVAS - ITEM) // 2  # 4: the corner of a centred item
TASKS = ("left", "right")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def multi_fashion_tasks(names: list[str] | None = None) -> list[Task]:
    """The tasks (both by default): 10-class classification of the left and of the right item."""
    return [Task(t, "multiclass", n_outputs=len(CLASSES)) for t in TASKS if names is None or t in names]


def read_idx(path: str | Path, limit: int | None = None) -> np.ndarray:
    """A (gzip'd or plain) IDX file of unsigned bytes as a uint8 array: images [N, H, W] (magic 2051) or
    labels [N] (magic 2049); the first `limit` items only. A ValueError naming the file otherwise."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] not in (1, 3):
                raise ValueError(f"{path} is not an IDX file of unsigned bytes (header {head.hex() or 'empty'})")
            dims = tuple(int.from_bytes(f.read(4), "big") for _ in range(head[3]))
            n = dims[0] if limit is None else min(dims[0], limit)
            size = n * int(np.prod(dims[1:], dtype=np.int64))
            data = f.read(size)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path} cannot be read: {e}") from None
    if len(data) != size:
        raise ValueError(f"{path} is truncated: {len(data)} of {size} bytes for {n} items of shape {dims[1:]}")
    return np.frombuffer(data, dtype=np.uint8).reshape((n,) + dims[1:])


def read_split(folder: Path, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 28, 28] uint8, labels [N] uint8) of one Fashion-MNIST split."""
    img_file, lab_file = (folder / f for f in FILES[split])
    images, labels = read_idx(img_file, limit), read_idx(lab_file, limit)
    if images.ndim != 3 or images.shape[1:] != (ITEM, ITEM):
        raise ValueError(f"{img_file}: expected {ITEM}x{ITEM} images, got shape {images.shape[1:]}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{lab_file}: {len(labels)} labels for {len(images)} images in {img_file}")
    if labels.size and labels.max() >= len(CLASSES):
        raise ValueError(f"{lab_file}: label {int(labels.max())} is not one of the {len(CLASSES)} classes")
    return images, labels


def compose(images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                                        dict[str, np.ndarray]]:
    """Composites [N, 36, 36] uint8 of `images` (each the left item once), their labels {left, right}, and
    where each item's corner landed {left: [N, 2], right: [N, 2]} (row, column)."""
    rng = np.random.default_rng(seed)
    n = len(images)
    partner = rng.permutation(n)
    shift_left = rng.integers(1, MAX_SHIFT + 1, size=(n, 2))
    shift_right = rng.integers(1, MAX_SHIFT + 1, size=(n, 2))
    corners = {"left": CENTRE - shift_left, "right": CENTRE + shift_right}
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    for key, items in (("left", images), ("right", images[partner])):
        for r in range(CENTRE - MAX_SHIFT, CENTRE + MAX_SHIFT + 1):
            for c in range(CENTRE - MAX_SHIFT, CENTRE + MAX_SHIFT + 1):
                rows = np.nonzero((corners[key][:, 0] == r) & (corners[key][:, 1] == c))[0]
                if rows.size:
                    window = canvas[rows, r:r + ITEM, c:c + ITEM]
                    canvas[rows, r:r + ITEM, c:c + ITEM] = np.maximum(window, items[rows])
    return canvas, {"left": labels, "right": labels[partner]}, corners


def load_multi_fashion(path: str | Path | None = None, val_fraction: float = 0.1, seed: int = 0,
                       limit: int | None = None, tasks: list[str] | None = None) -> DatasetBundle:
    """The Multi-Fashion bundle. `path`: a folder holding the four Fashion-MNIST .gz files (default: where
    `multitask data install multi-fashion` put them). `limit`: use only the first `limit` images of the
    training and of the test file (quick runs). Inputs are uint8 [N, 1, 36, 36]; normalisation statistics
    come from the training composites."""
    folder = find_fashion_mnist(path)
    parts = {}
    for i, split in enumerate(("train", "test")):
        images, labels = read_split(folder, split, limit)
        # one seed, two independent streams: the test composites do not depend on how many train images there are
        canvas, y, _ = compose(images, labels, int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        parts[split] = MultiTaskData(torch.from_numpy(canvas).unsqueeze(1),
                                     {t: torch.from_numpy(y[t].astype(np.int64)) for t in TASKS})
    pool = parts["train"]
    idx = split_indices(len(pool), {"train": 1.0 - val_fraction, "val": val_fraction}, seed)
    train, val = pool.subset(idx["train"]), pool.subset(idx["val"])
    mean, std = channel_stats(train.inputs)
    pre = ImagePreprocessor(image_column="image", height=CANVAS, width=CANVAS, channels=1, mean=mean, std=std)
    bundle = DatasetBundle("multi-fashion", multi_fashion_tasks(), train, val, parts["test"], pre,
                           info={"rows": {"train": len(train), "val": len(val), "test": len(parts["test"])},
                                 "source": str(folder), "classes": list(CLASSES)})
    return bundle if tasks is None else bundle.select_tasks(tasks)
