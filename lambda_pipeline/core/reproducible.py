"""Same input, same bytes: the fixed timestamps and permissions every file of the artifact is written with,
and the project's compiled jars too (``core/project_jars.py``).

An unchanged source tree then gives byte-identical files, and ``aws s3 sync`` uploads nothing new.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["FIXED_EPOCH", "FIXED_TIME", "copy_file", "sha256", "write_zip"]

# 1980-01-01, the earliest time a zip entry can carry: the same for every file of every build.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
FIXED_EPOCH = 315532800


def write_zip(target: Path, entries: Iterable[tuple[str, Path]]) -> None:
    """A zip with sorted entries, a fixed time and fixed permissions: same input, same bytes."""
    partial = target.with_name(target.name + ".part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, file in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, file.read_bytes())
    partial.replace(target)


def copy_file(source: Path, target: Path, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)
    os.utime(target, (FIXED_EPOCH, FIXED_EPOCH))


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
