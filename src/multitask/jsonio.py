"""Run files written atomically, and as strict JSON: NaN and infinity are not JSON, so they are written as null
with a reason."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

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


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(file)` on a temp file beside `path`, sync it and rename it over `path`: a kill at any
    moment leaves `path` either as it was or complete. The temp file is removed if writing fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """`write_atomic` for UTF-8 text."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


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
