"""Checkpoints written atomically (temp file + fsync + rename) and loaded safely (tensors and plain data only).

A run directory holds ``checkpoints/last.pt`` (everything needed to resume) and ``checkpoints/best.pt`` (the
weights of the best validation epoch). The pair is kept consistent across a kill at any point by a two-phase
write: new best weights go to ``best.next.pt`` first, then ``last.pt`` (which records the best epoch) is
written, then ``best.next.pt`` is renamed to ``best.pt``. Whoever reads the pair (`resolve_best`) finishes
or discards an interrupted write, so the best weights always belong to the best epoch that ``last.pt`` names.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from multitask.errors import CheckpointError
from multitask.jsonio import write_atomic

NEXT_BEST = "best.next.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """Write `obj` with torch.save so that `path` is either the old file or the complete new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: a checkpoint cannot run code when it is read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"checkpoint {path} holds Python objects beyond tensors and plain data, which multitask refuses to "
            "load (loading them could run code); it was not written by multitask or has been altered") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or not a PyTorch "
                              f"checkpoint ({detail[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a multitask checkpoint (it holds a {type(state).__name__})")
    return state


def load_run_state(path: Path, map_location: str | torch.device = "cpu",
                   keys: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """`load_checkpoint`, checking that the entries a trainer needs are there."""
    state = load_checkpoint(path, map_location)
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a multitask checkpoint: it has no {', '.join(missing)}")
    return state


def load_weights(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """`module.load_state_dict(weights)`, or a one-line CheckpointError saying which keys or shapes differ."""
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{source}: the model weights are not a mapping of tensors")
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in weights and isinstance(weights[k], torch.Tensor) and weights[k].shape != v.shape]
    wrong_type = [k for k in expected if k in weights and not isinstance(weights[k], torch.Tensor)]
    if missing or unexpected or shapes or wrong_type:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs (saved vs model)", shapes),
                             ("not a tensor", wrong_type)):
            if items:
                parts.append(f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)}): was it written by another "
                              "config or architecture?")
    module.load_state_dict(weights)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temp files that a kill during an atomic write leaves behind; returns what was removed."""
    removed = []
    if Path(folder).is_dir():
        for tmp in Path(folder).glob("*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def resolve_best(folder: Path, best_epoch: int, finish: bool = True) -> Path | None:
    """The file holding the best weights of `best_epoch` (the epoch `last.pt` records), finishing
    (`finish=True`: renaming ``best.next.pt``) or discarding a best write that a kill interrupted."""
    folder = Path(folder)
    nxt, best = folder / NEXT_BEST, folder / "best.pt"
    if nxt.exists():
        try:
            epoch = int(load_checkpoint(nxt).get("epoch", -1))
        except CheckpointError:
            epoch = None
        if epoch == best_epoch:  # last.pt was written after it: the write was complete but for the rename
            if not finish:
                return nxt
            os.replace(nxt, best)
        elif finish:  # written before a kill that came before last.pt: that epoch will be redone
            nxt.unlink(missing_ok=True)
    return best if best.exists() else None
