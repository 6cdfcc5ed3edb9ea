"""Fingerprints of a tile's inputs (design decision 2): what the planner compares (stat)
and what the worker records (contents hashed right before reading, checked after)."""
import json
import os

import numpy as np
import pytest

from specprod_db.load import fingerprints
from specprod_db.errors import InputError


def _files(tmp_path, **contents):
    out = []
    for name, data in contents.items():
        path = tmp_path / name
        if data is None:
            out.append((name, None))
        else:
            path.write_bytes(data)
            out.append((name, str(path)))
    return out


def test_hashed_stat_and_text_round_trip(tmp_path):
    files = _files(tmp_path, a=b"abc", b=None)
    fp = fingerprints.hashed(files)
    a, b = fp.files
    assert (a.name, a.size) == ("a", 3) and len(a.sha256) == 64 and not a.missing
    assert b.missing and b.sha256 is None
    assert fingerprints.Fingerprint.from_text(fp.to_text()) == fp
    assert json.loads(fp.to_text())[1] == ["b", None, None, None]
    st = fingerprints.stat(files)
    assert st.stat_key() == fp.stat_key() and not st.is_hashed and fp.is_hashed
    assert not st.same_content(fp)  # a stat-only fingerprint knows no content


def test_unreadable_recorded_value_is_a_change(tmp_path):
    for text in (None, "", "123:456:abc", "not json", "[1, 2]"):
        assert fingerprints.Fingerprint.from_text(text) is None
    current = fingerprints.stat(_files(tmp_path, a=b"abc"))
    assert fingerprints.planned("123:456:abc", current) == current.to_text()


def test_planner_uses_stat_only(tmp_path):
    files = _files(tmp_path, a=b"abc")
    recorded = fingerprints.hashed(files).to_text()
    # unchanged: the recorded text, whatever it says of the content
    assert fingerprints.planned(recorded, fingerprints.stat(files)) == recorded
    # touched (same bytes): planned as changed; the worker finds the same content
    os.utime(files[0][1], ns=(1, 1))
    moved = fingerprints.planned(recorded, fingerprints.stat(files))
    assert moved != recorded
    assert fingerprints.hashed(files).same_content(
        fingerprints.Fingerprint.from_text(recorded))
    # new bytes: a different content
    open(files[0][1], "wb").write(b"abd")
    assert not fingerprints.hashed(files).same_content(
        fingerprints.Fingerprint.from_text(recorded))


def test_a_file_appearing_or_disappearing_changes_it(tmp_path):
    before = fingerprints.hashed(_files(tmp_path, a=b"x", b=None))
    after = fingerprints.hashed(_files(tmp_path, a=b"x", b=b"y"))
    assert not after.same_content(before)
    assert fingerprints.planned(before.to_text(), fingerprints.stat(
        [("a", str(tmp_path / "a")), ("b", str(tmp_path / "b"))])) != before.to_text()


def test_file_changed_while_read_is_an_input_error(tmp_path):
    files = _files(tmp_path, a=b"abc")
    fp = fingerprints.hashed(files)
    fingerprints.check_unchanged(fp, files, 1000)  # nothing moved
    open(files[0][1], "wb").write(b"abcd")
    with pytest.raises(InputError, match=r"tile 1000: .*a changed while it was being read"):
        fingerprints.check_unchanged(fp, files, 1000)


def test_exposures_digest_depends_on_qualifying_rows_only():
    e = np.zeros(3, dtype=[("TILEID", "i4"), ("EXPID", "i4"), ("EFFTIME_SPEC", "f8")])
    e["TILEID"], e["EXPID"], e["EFFTIME_SPEC"] = [1, 1, 2], [10, 11, 12], [5, 0, 5]
    f = np.zeros(3, dtype=[("EXPID", "i4"), ("CAMERA", "U3")])
    f["EXPID"], f["CAMERA"] = [10, 11, 12], ["b0", "b0", "b0"]
    d = fingerprints.exposures_digest(e, f, 1)
    e2 = e.copy()
    e2["EFFTIME_SPEC"][1] = 0.5  # a non-qualifying exposure of tile 1 now qualifies
    assert fingerprints.exposures_digest(e2, f, 1) != d
    e3 = e.copy()
    e3["EFFTIME_SPEC"][2] = 7  # another tile's exposure
    assert fingerprints.exposures_digest(e3, f, 1) == d
    assert fingerprints.exposures_digest(e[::-1], f[::-1], 1) == d  # order-free


# --- a file that is there but unusable (issue 16 §1: any OSError, not only ENOENT) -----

def _unusable(tmp_path):
    """A symlink loop, a directory in a file's place, a path through a regular file."""
    loop = tmp_path / "loop.fits"
    loop.symlink_to("loop.fits")
    directory = tmp_path / "dir.fits"
    directory.mkdir()
    (tmp_path / "plain").write_bytes(b"x")
    return {"loop": (str(loop), "Too many levels of symbolic links"),
            "directory": (str(directory), "is a directory"),
            "notdir": (str(tmp_path / "plain" / "x.fits"), "Not a directory")}


@pytest.mark.parametrize("kind", ["loop", "directory", "notdir"])
def test_planner_stat_never_raises_for_an_unusable_file(kind, tmp_path):
    path, why = _unusable(tmp_path)[kind]
    files = [("a", str(tmp_path / "a")), ("x.fits", path), ("gone", str(tmp_path / "no"))]
    (tmp_path / "a").write_bytes(b"abc")
    fp = fingerprints.stat(files)  # the planner: used to raise OSError (run refused)
    a, x, gone = fp.files
    assert not a.missing and a.error is None
    assert x.error == why and not x.missing and x.sha256 is None and not fp.is_hashed
    assert gone.missing and gone.error is None
    assert fp.unreadable == [x]
    # never equal to anything recorded: the tile is planned as changed (then it fails)
    recorded_missing = fingerprints.Fingerprint((a, fingerprints.FileStamp("x.fits"), gone))
    assert fp.stat_key() != recorded_missing.stat_key()
    assert fingerprints.planned(recorded_missing.to_text(), fp) != recorded_missing.to_text()
    assert fingerprints.Fingerprint.from_text(fp.to_text()) == fp


@pytest.mark.parametrize("kind", ["loop", "directory", "notdir"])
def test_worker_hash_of_an_unusable_file_is_an_input_error(kind, tmp_path):
    path, why = _unusable(tmp_path)[kind]
    with pytest.raises(InputError) as err:
        fingerprints.hashed([("x.fits", path)], label="tile 1000")
    assert str(err.value) == f"tile 1000: {path}: cannot be read: {why}"


def test_present_is_false_only_for_no_such_file(tmp_path):
    from specprod_db.paths import checkgzip, present
    unusable = _unusable(tmp_path)
    assert all(present(p) for p, _ in unusable.values())  # os.path.exists: all False
    assert not present(str(tmp_path / "absent"))
    (tmp_path / "dangling").symlink_to("nowhere")
    assert not present(str(tmp_path / "dangling"))
    # checkgzip keeps an unusable X rather than taking it for absent
    assert checkgzip(unusable["loop"][0]) == unusable["loop"][0]
