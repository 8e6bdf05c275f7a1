"""Datasets packaged by Debian, fetched without root: `apt-get download` the .deb into a temporary folder and
unpack its data member (Python's ar + tar readers; `dpkg-deb -x` when the member is compressed in a way
tarfile cannot read). Fashion-MNIST comes from the package `dataset-fashion-mnist`.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from multitask.data.paths import data_home

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_DIR_IN_PACKAGE = "usr/share/datasets/fashion-mnist"
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
SYSTEM_FASHION = Path("/") / FASHION_DIR_IN_PACKAGE  # where `apt-get install dataset-fashion-mnist` puts them


class InstallError(FileNotFoundError):
    """The data could not be fetched; the message says what to run instead. A FileNotFoundError, so the CLI
    reports it as bad input (exit 2)."""


def _has_files(folder: Path) -> bool:
    try:
        return all((folder / f).is_file() for f in FASHION_FILES)
    except OSError:  # a folder this user may not look into
        return False


def _how_to(dest: Path) -> str:
    return (f"as root: `apt-get update && apt-get install {FASHION_PACKAGE}` (the files land in {SYSTEM_FASHION}); "
            f"or put {', '.join(FASHION_FILES)} (from https://github.com/zalandoresearch/fashion-mnist) in {dest}")


def find_fashion_mnist(path: str | Path | None = None) -> Path:
    """The folder holding the four Fashion-MNIST files: `path`, else the data home, else the system package's
    folder; an error saying how to install them when none has them."""
    candidates = [Path(path).expanduser()] if path is not None else [data_home() / "fashion-mnist", SYSTEM_FASHION]
    for c in candidates:
        if _has_files(c):
            return c
    missing = [f for f in FASHION_FILES if not (candidates[0] / f).is_file()]
    raise FileNotFoundError(
        f"Fashion-MNIST not found (looked in {', '.join(map(str, candidates))}; missing e.g. {missing[0]}). "
        f"Run `multitask data install multi-fashion`, or {_how_to(data_home() / 'fashion-mnist')}")


def _ar_members(deb: bytes) -> dict[str, bytes]:
    """The members of an ar archive (a .deb is one: debian-binary, control.tar.*, data.tar.*)."""
    if not deb.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    out, pos = {}, 8
    while pos + 60 <= len(deb):
        header = deb[pos:pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        out[name] = deb[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are 2-byte aligned
    return out


def _extract_deb(deb: Path, into: Path) -> None:
    """Unpack the data member of `deb` below `into` (Python first, `dpkg-deb -x` as the fallback)."""
    members = _ar_members(deb.read_bytes())
    data = next((k for k in members if k.startswith("data.tar")), None)
    if data is None:
        raise ValueError(f"{deb} has no data.tar member")
    try:
        with tarfile.open(fileobj=io.BytesIO(members[data])) as tar:
            for member in tar:  # regular files only, and only below `into` (no links, no ../ paths)
                name = os.path.normpath(member.name)
                if not member.isfile() or name.startswith("..") or os.path.isabs(name):
                    continue
                target = into / name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        return
    except tarfile.TarError:  # e.g. data.tar.zst, which tarfile cannot read
        if shutil.which("dpkg-deb") is None:
            raise InstallError(f"{deb}: {data} cannot be unpacked here (no dpkg-deb); {_how_to(into)}") from None
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True, capture_output=True)


def install_fashion_mnist(dest: Path | None = None) -> Path:
    """Fetch the Fashion-MNIST files into `dest` (default: the data home) from the Debian package, as any user;
    already present files (there, or from an installed system package) are used as they are."""
    dest = Path(dest or data_home() / "fashion-mnist")
    if _has_files(dest):
        return dest
    if dest == data_home() / "fashion-mnist" and _has_files(SYSTEM_FASHION):
        return SYSTEM_FASHION
    if shutil.which("apt-get") is None:
        raise InstallError(f"cannot fetch {FASHION_PACKAGE}: this system has no apt-get; {_how_to(dest)}")
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(["apt-get", "download", FASHION_PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{FASHION_PACKAGE}_*.deb"))
        if got.returncode != 0 or not debs:
            reason = " ".join((got.stderr or got.stdout).split())[:300] or f"exit {got.returncode}"
            hint = (f"the package lists do not know {FASHION_PACKAGE}: run `apt-get update` as root first, then "
                    "try again; or " if "Unable to locate" in reason or "No packages found" in reason else "")
            raise InstallError(f"`apt-get download {FASHION_PACKAGE}` failed ({reason}); {hint}{_how_to(dest)}")
        try:
            _extract_deb(debs[0], Path(tmp) / "root")
        except (ValueError, OSError, subprocess.CalledProcessError, tarfile.TarError) as e:
            raise InstallError(f"{debs[0].name} cannot be unpacked ({e}); {_how_to(dest)}") from None
        src = Path(tmp) / "root" / FASHION_DIR_IN_PACKAGE
        if not _has_files(src):
            raise InstallError(f"{debs[0].name} does not hold {', '.join(FASHION_FILES)} in /{FASHION_DIR_IN_PACKAGE}")
        try:
            dest.mkdir(parents=True, exist_ok=True)
            for f in FASHION_FILES:
                shutil.copyfile(src / f, dest / (f + ".part"))
                os.replace(dest / (f + ".part"), dest / f)  # never a half-written file under the real name
        except OSError as e:
            raise InstallError(f"cannot write the Fashion-MNIST files to {dest} ({e.strerror}); set "
                               "MULTITASK_DATA to a folder you can write to") from None
    return dest
