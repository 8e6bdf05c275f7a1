"""Run files as strict JSON: NaN and infinity are not JSON, so they are written as null with a reason."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

NULL_REASONS = "null_values"  # the key under which a record lists the values written as null, and why


def _clean(obj: Any, path: str, reasons: dict[str, str]) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        reasons[path] = "undefined (NaN)" if math.isnan(obj) else f"infinite ({obj})"
        return None
    if isinstance(obj, dict):
        return {k: _clean(v, f"{path}.{k}" if path else str(k), reasons) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v, f"{path}[{i}]", reasons) for i, v in enumerate(obj)]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """`obj` as strict JSON; in a mapping, non-finite floats become null and are listed under `null_values`."""
    reasons: dict[str, str] = {}
    clean = _clean(obj, "", reasons)
    if reasons and isinstance(clean, dict):
        clean[NULL_REASONS] = {**clean.get(NULL_REASONS, {}), **reasons}
    return json.dumps(clean, indent=indent, allow_nan=False)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` so that `path` holds either its old content or all of the new one (temp file + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (see `to_json`), written atomically."""
    write_text_atomic(path, to_json(obj, indent=2))


def nulls_to_nan(obj: Any) -> Any:
    """The inverse for metric tables read back: null numbers become NaN again."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: nulls_to_nan(v) for k, v in obj.items() if k != NULL_REASONS}
    return obj
