"""A stopped task's output, kept in a file: written and read in chunks, never whole in memory."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["CHUNK", "keep", "read_kept"]

#: Bytes per chunk read or sent: well under gRPC's 4 MiB message limit.
CHUNK = 64 << 10


def keep(chunks: Iterable[bytes], path: Path) -> int:
    """Write ``chunks`` to ``path`` (whole or not at all: a temp file renamed into place).
    Returns the bytes written."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    written = 0
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                written += len(chunk)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def read_kept(path: Path, tail: int | None = None) -> Iterator[bytes]:
    """The file's content in chunks; with ``tail``, only its last ``tail`` lines.

    Opens the file at once (so a missing file raises here, not when iterated).
    """
    f = open(path, "rb")  # noqa: SIM115 - closed by the generator
    start = 0 if tail is None else _start_of_last_lines(f, tail)

    def chunks() -> Iterator[bytes]:
        with f:
            f.seek(start)
            while block := f.read(CHUNK):
                yield block

    return chunks()


def _start_of_last_lines(f: BinaryIO, lines: int) -> int:
    """Offset where the last ``lines`` lines of the file begin, read backwards in chunks."""
    end = f.seek(0, os.SEEK_END)
    if lines <= 0:
        return end
    pos = end
    if end:  # a final newline ends the last line; it starts none
        f.seek(end - 1)
        if f.read(1) == b"\n":
            pos = end - 1
    found = 0
    while pos > 0:
        step = min(CHUNK, pos)
        pos -= step
        f.seek(pos)
        block = f.read(step)
        i = len(block)
        while (i := block.rfind(b"\n", 0, i)) != -1:
            found += 1
            if found == lines:
                return pos + i + 1
    return 0
