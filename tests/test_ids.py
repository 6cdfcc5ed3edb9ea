"""Composite ids: round trips and the old tool's encodings on its own worked examples."""
import numpy as np
import pytest

from conftest import require
from specprod_db import ids


@pytest.mark.parametrize("value, expected", [
    (ids.target_id("main", 1234, 123456789), 475368997848868212518973852949),
    (ids.zpix_id("dark", "main", 123456789), 237684487653473477223012617493),
    (ids.zpix_id("bright", "main", 123456789), 158456325139209139629468667157),
    (ids.ztile_id("cumulative", 20220613, 1234, 123456789),
     33503513911740049863153959922673896725),
    (ids.ztile_id("pernight", 20220613, 4321, 123456789),
     65404985810578087757944284910788005141),
    (ids.fiberassign_id(1234, 1234, 123456789), 97767552565365474777390944865557),
    (ids.fiberassign_id(4321, 4321, 123456789), 342344890303844583884202505391381),
])
def test_old_tool_examples(value, expected):
    assert ids.to_int(value) == [expected]


def test_frameid_examples():
    assert ids.frameid([12345, 54321], ["b0", "r5"]).tolist() == [1234500, 5432115]
    assert ids.cameraid(["b0", "b9", "r0", "z9"]).tolist() == [0, 9, 10, 29]
    with pytest.raises(ValueError, match="camera"):
        ids.cameraid(["x1"])


def test_composite_round_trip():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**32, 1000)
    b = rng.integers(0, 2**32, 1000)
    t = rng.integers(0, 2**63, 1000)
    words = ids.composite(a, b, t)
    assert ids.to_int(words) == [(int(x) << 96) | (int(y) << 64) | int(z)
                                 for x, y, z in zip(a, b, t)]
    assert (ids.from_int(ids.to_int(words)) == words).all()


def test_encodings_reject_bad_values():
    with pytest.raises(KeyError, match="survey"):
        ids.surveyid(["main", "nosuch"])
    with pytest.raises(ValueError):
        ids.composite(2**32, 1, 1)
    with pytest.raises(ValueError):
        ids.composite(1, 1, -5)
    with pytest.raises(ValueError):
        ids.ztile_id("cumulative", 1 << 27, 1, 1)


def test_new_programs_have_codes():
    assert ids.programid(["dark1b", "bright1b"]).tolist() == [5, 6]


def test_no_sky_and_targetid_layout():
    tid = np.array([-12345017, 0, 1 << 59 | 5, 39627652591521181])
    assert ids.no_sky(tid).tolist() == [False, False, False, True]
    objid, brickid, release, mock, sky, gaiadr = ids.decode_targetid(
        (9010 << 42) | (503252 << 22) | 1234)
    assert (objid, brickid, release, mock, sky, gaiadr) == (1234, 503252, 9010, 0, 0, 0)
    assert ids.ls_id(9010, 503252, 1234) == (9010 << 40) | (503252 << 16) | 1234


def test_targetid_decoding_matches_desitarget():
    targets = require("desitarget.targets")
    rng = np.random.default_rng(2)
    objid = rng.integers(0, 2**22, 50)
    brickid = rng.integers(1, 662175, 50)
    release = rng.choice([9010, 9011, 9012, 9999, 503], 50)
    tid = targets.encode_targetid(objid=objid, brickid=brickid, release=release)
    ours = ids.decode_targetid(tid)
    theirs = targets.decode_targetid(tid)
    for a, b in zip(ours, theirs):
        assert np.array_equal(np.asarray(a), np.asarray(b))
