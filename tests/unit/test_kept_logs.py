"""A stopped task's kept output: written and read in chunks, the tail found from the end."""

from __future__ import annotations

import pytest

from sonm_p2p.miner._kept_logs import CHUNK, keep, read_kept


@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.parametrize("tail", [None, 0, 1, 3, 10_000, 250_000])
def test_tail_matches_splitlines(tmp_path, final_newline: bool, tail: int | None) -> None:
    lines = [f"line {i} {'x' * (i % 97)}\n".encode() for i in range(20_000)]
    data = b"".join(lines)
    if not final_newline:
        data = data[:-1]
    path = tmp_path / "t.log"
    assert keep(iter([data[:100], data[100:]]), path) == len(data)
    got = list(read_kept(path, tail))
    assert all(len(c) <= CHUNK for c in got)  # each fits one gRPC message easily
    want = (
        data if tail is None else b"".join(data.splitlines(keepends=True)[-tail:] if tail else [])
    )  # noqa: E501
    assert b"".join(got) == want


def test_empty_and_missing_files(tmp_path) -> None:
    path = tmp_path / "empty.log"
    keep(iter([]), path)
    assert list(read_kept(path)) == [] and list(read_kept(path, 5)) == []
    with pytest.raises(FileNotFoundError):
        read_kept(tmp_path / "missing.log")


def test_a_file_is_kept_whole_or_not_at_all(tmp_path) -> None:
    path = tmp_path / "t.log"
    keep(iter([b"old\n"]), path)

    def broken():
        yield b"new"
        raise OSError("the engine went away")

    with pytest.raises(OSError):
        keep(broken(), path)
    assert path.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.log"]  # no temp file left
