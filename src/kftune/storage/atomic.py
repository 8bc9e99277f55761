"""Write a directory so that it appears complete or not at all.

Artifacts are written into a temporary sibling directory and renamed onto the final path
only when everything in them has been written. A step that fails half way leaves no
directory that looks like a finished artifact (the temporary one is removed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def refuse_existing_artifact(path: str | os.PathLike[str]) -> None:
    """Raise unless ``path`` is absent or an empty directory: where an artifact may be written.

    Long steps call this before their work, so that a taken path fails them at the start.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"refusing to overwrite existing artifact at {path}")


@contextlib.contextmanager
def atomic_directory(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to ``final_path`` on success.

    An existing *empty* directory at ``final_path`` (KFP creates output paths' parents, some
    runners the path itself) is replaced; a non-empty one is an error, since overwriting a
    finished artifact in place would expose a half-written mix of both.
    """
    final = Path(final_path)
    refuse_existing_artifact(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            final.rmdir()
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file handle whose content appears at ``path`` only when the block completes.

    Written under a temporary sibling name and renamed into place; on an error the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file (UTF-8) through a temporary name and a rename."""
    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))
