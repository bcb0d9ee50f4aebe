"""Files with the same bytes are stored once: a decoder's prompt and step variants share their weights on disk."""

from __future__ import annotations

import os

from shapetrace._core.dedupe import link_identical


def test_identical_large_files_become_one_inode_and_others_stay_apart(tmp_path):
    big = os.urandom(3 << 20)
    (tmp_path / "a.bin").write_bytes(big)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(big)
    (tmp_path / "c.bin").write_bytes(big[:-1] + bytes([big[-1] ^ 1]))  # same size, one byte differs
    (tmp_path / "small1").write_bytes(b"x" * 100)
    (tmp_path / "small2").write_bytes(b"x" * 100)
    saved = link_identical(tmp_path)
    assert saved == len(big)
    assert os.path.samefile(tmp_path / "a.bin", tmp_path / "sub" / "b.bin")
    assert not os.path.samefile(tmp_path / "a.bin", tmp_path / "c.bin")
    assert not os.path.samefile(tmp_path / "small1", tmp_path / "small2")  # below the threshold: left alone
    assert (tmp_path / "sub" / "b.bin").read_bytes() == big  # every name still reads its own bytes
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.bin", "c.bin", "small1", "small2", "sub"]
    assert link_identical(tmp_path) == 0  # linked already: nothing more to save
