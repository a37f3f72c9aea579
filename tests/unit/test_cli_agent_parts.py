"""The pure parts of sonmcli's agent: its message frames and its check for changed code."""

from __future__ import annotations

import os

import pytest

from cli._agent import fingerprint
from cli._launch import frame, unframe


def test_frames_round_trip_whole_and_wait_for_the_rest():
    msg = {"v": 1, "argv": ["sonmcli", "ping"], "env": {"A": "é"}, "cwd": "/"}
    data = frame(msg) + frame({"exit": -2})
    assert unframe(data[:3]) == (None, data[:3])
    assert unframe(data[:10]) == (None, data[:10])
    first, rest = unframe(data)
    assert first == msg
    assert unframe(rest) == ({"exit": -2}, b"")


@pytest.mark.parametrize("payload", [b"\x00\x00\x00\x02no", b"\x00\x00\x00\x01\xe9"])
def test_a_frame_that_is_not_a_message_is_refused(payload):
    with pytest.raises(ValueError):
        unframe(payload)


def test_not_a_dict_is_refused():
    import marshal

    data = marshal.dumps([1, 2])
    with pytest.raises(ValueError):
        unframe(len(data).to_bytes(4, "big") + data)


def test_fingerprint_changes_with_any_python_file_and_nothing_else(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    before = fingerprint([pkg])
    assert len(before) == 2
    (pkg / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"cache")
    (pkg / "notes.txt").write_text("not code")
    assert fingerprint([pkg]) == before
    (pkg / "sub" / "b.py").write_text("y = 22\n")  # size
    changed = fingerprint([pkg])
    assert changed != before
    st = (pkg / "a.py").stat()
    os.utime(pkg / "a.py", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same size, newer
    assert fingerprint([pkg]) != changed
    (pkg / "sub" / "c.py").write_text("")
    assert len(fingerprint([pkg])) == 3
