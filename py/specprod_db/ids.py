"""Identifier encodings, vectorised: the one place each formula is written.

specprod-db 1.3 stores 128-bit composite ids in ``NUMERIC(39)`` columns
(``py/specprodDB/util.py``); people query them, so they are reproduced bit for bit:

=============  =====================================================================
table          id
=============  =====================================================================
target         ``(surveyid(SURVEY) << 96) | (TILEID << 64) | TARGETID``
fiberassign    ``(LOCATION << 96) | (TILEID << 64) | TARGETID``
potential      same as fiberassign
zpix           ``(programid(PROGRAM) << 96) | (surveyid(SURVEY) << 64) | TARGETID``
ztile          ``(((spgrpid(SPGRP) << 27) | SPGRPVAL) << 96) | (TILEID << 64) | TARGETID``
frame          ``100 * EXPID + cameraid(CAMERA)`` (an integer, not composite)
=============  =====================================================================

A composite id is held in numpy as two uint64 words ``[high, low]`` (the dtype of
``numeric(39)`` columns in :mod:`specprod_db.schema`): ``high = (A << 32) | B`` and
``low = TARGETID`` for ``(A << 96) | (B << 64) | TARGETID``.
"""
import numpy as np

SURVEYID = {"cmx": 1, "special": 2, "sv1": 3, "sv2": 4, "sv3": 5, "main": 6}
#: ``dark1b`` and ``bright1b`` (desispec >= 0.70) are ours: decision 5 of the design.
PROGRAMID = {"backup": 1, "bright": 2, "dark": 3, "other": 4, "dark1b": 5, "bright1b": 6}
SPGRPID = {"1x_depth": 1, "4x_depth": 2, "cumulative": 3, "lowspeed": 4, "perexp": 5,
           "pernight": 6, "healpix": 7}

#: Bit layout of a composite id ``(A << HIGH_SHIFT) | (B << MIDDLE_SHIFT) | TARGETID``:
#: A and B each hold 32 bits, TARGETID 64.
HIGH_SHIFT = 96
MIDDLE_SHIFT = 64
#: The A field of a ztile id: ``(spgrpid(SPGRP) << SPGRPVAL_BITS) | SPGRPVAL``.
SPGRPVAL_BITS = 27
#: ``cameraid(CAMERA) = CAMERA_BAND_STEP * CAMERA_BANDS.index(band) + digit``.
CAMERA_BANDS = "brz"
CAMERA_BAND_STEP = 10
#: ``frameid = FRAMEID_EXPID_FACTOR * EXPID + cameraid(CAMERA)``.
FRAMEID_EXPID_FACTOR = 100

_U32 = np.uint64(0xFFFFFFFF)


def _lookup(mapping, values, what):
    values = np.atleast_1d(np.asarray(values))
    if values.dtype.kind == "S":
        values = values.astype(str)
    out = np.zeros(values.shape, dtype=np.int64)
    seen = np.zeros(values.shape, dtype=bool)
    for key, code in mapping.items():
        hit = values == key
        out[hit] = code
        seen |= hit
    if not seen.all():
        bad = sorted(set(values[~seen].tolist()))
        raise KeyError(f"unknown {what} {bad}; known: {', '.join(mapping)}")
    return out


def surveyid(survey):
    """Integer code of SURVEY (cmx 1 ... main 6); KeyError for anything else."""
    return _lookup(SURVEYID, survey, "survey")


def programid(program):
    """Integer code of PROGRAM (backup 1, bright 2, dark 3, other 4, dark1b 5, bright1b 6)."""
    return _lookup(PROGRAMID, program, "program")


def spgrpid(spgrp):
    """Integer code of a spectral grouping (``cumulative`` is 3)."""
    return _lookup(SPGRPID, spgrp, "spgrp")


def cameraid(camera):
    """``10 * index('brz', camera[0]) + int(camera[1])``: b0..b9 = 0..9, r0 = 10, z9 = 29."""
    camera = np.atleast_1d(np.asarray(camera))
    if camera.dtype.kind == "U":
        camera = np.char.encode(camera, "ascii")
    raw = camera.astype("S2").view(np.uint8).reshape(-1, 2)
    band = np.full(raw.shape[0], -1, dtype=np.int64)
    for i, c in enumerate(CAMERA_BANDS.encode()):
        band[raw[:, 0] == c] = i
    digit = raw[:, 1].astype(np.int64) - ord("0")
    bad = (band < 0) | (digit < 0) | (digit > 9)
    if bad.any():
        raise ValueError(f"invalid camera name(s) {sorted(set(camera[bad].tolist()))}")
    return (CAMERA_BAND_STEP * band + digit).reshape(camera.shape)


def frameid(expid, camera):
    """``100 * EXPID + cameraid(CAMERA)``."""
    return FRAMEID_EXPID_FACTOR * np.asarray(expid, dtype=np.int64) + cameraid(camera)


def composite(a, b, targetid):
    """``(a << 96) | (b << 64) | targetid`` as an (N, 2) uint64 array [high, low].

    ``a`` and ``b`` must fit in 32 bits and ``targetid`` must be non-negative.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    targetid = np.asarray(targetid, dtype=np.int64)
    a, b, targetid = np.broadcast_arrays(a, b, targetid)
    if (a < 0).any() or (a > 0xFFFFFFFF).any() or (b < 0).any() or (b > 0xFFFFFFFF).any():
        raise ValueError("composite id fields must be 0 <= value < 2**32")
    if (targetid < 0).any():
        raise ValueError("composite ids need non-negative TARGETIDs")
    out = np.empty(a.shape + (2,), dtype=np.uint64)
    out[..., 0] = ((a.astype(np.uint64) << np.uint64(HIGH_SHIFT - MIDDLE_SHIFT))
                   | b.astype(np.uint64))
    out[..., 1] = targetid.astype(np.uint64)
    return out


def target_id(survey, tileid, targetid):
    """``target.id`` (also ``ztile.targetphotid``)."""
    return composite(surveyid(survey), tileid, targetid)


def fiberassign_id(location, tileid, targetid):
    """``fiberassign.id`` and ``potential.id``."""
    return composite(location, tileid, targetid)


def zpix_id(program, survey, targetid):
    """``zpix.id``."""
    return composite(programid(program), surveyid(survey), targetid)


def ztile_id(spgrp, spgrpval, tileid, targetid):
    """``ztile.id``; ``spgrpval`` must be < 2**27 (true for YYYYMMDD nights)."""
    spgrpval = np.asarray(spgrpval, dtype=np.int64)
    if (spgrpval < 0).any() or (spgrpval >= 1 << SPGRPVAL_BITS).any():
        raise ValueError(f"SPGRPVAL must be 0 <= value < 2**{SPGRPVAL_BITS}")
    return composite((spgrpid(spgrp) << SPGRPVAL_BITS) | spgrpval, tileid, targetid)


def decompose(value: int) -> tuple:
    """``(a, b, targetid)`` of the composite id ``(a << 96) | (b << 64) | targetid`` (a
    Python int, e.g. the value in a database message): the inverse of :func:`composite`."""
    value = int(value)
    return (value >> HIGH_SHIFT, (value >> MIDDLE_SHIFT) & 0xFFFFFFFF,
            value & ((1 << MIDDLE_SHIFT) - 1))


def _name_of(mapping, code):
    return next((k for k, v in mapping.items() if v == code), f"code {code}")


def decode_id(table: str, value: int) -> dict:
    """The fields a table's id is made of (the table above), by their column names in
    upper case, from its integer ``value``: ``{"TARGETID", "TILEID", "LOCATION"}`` of a
    ``fiberassign``/``potential`` id, ``{"TARGETID", "TILEID", "SURVEY"}`` of a ``target``
    id (and ``ztile.targetphotid``), ``{"TARGETID", "TILEID", "SPGRP", "SPGRPVAL"}`` of a
    ``ztile`` id (and of the afterburner tables', which are ztile ids),
    ``{"TARGETID", "SURVEY", "PROGRAM"}`` of a ``zpix`` id, ``{"EXPID", "CAMERA"}`` of a
    ``frame`` id.  For messages: what a 39-digit number means."""
    value = int(value)
    if table == "frame":
        expid, cam = divmod(value, FRAMEID_EXPID_FACTOR)
        band, digit = divmod(cam, CAMERA_BAND_STEP)
        return {"EXPID": expid, "CAMERA": CAMERA_BANDS[band] + str(digit)
                if band < len(CAMERA_BANDS) else f"code {cam}"}
    a, b, targetid = decompose(value)
    if table in ("fiberassign", "potential"):
        return {"TARGETID": targetid, "TILEID": b, "LOCATION": a}
    if table == "target":
        return {"TARGETID": targetid, "TILEID": b, "SURVEY": _name_of(SURVEYID, a)}
    if table == "zpix":
        return {"TARGETID": targetid, "SURVEY": _name_of(SURVEYID, b),
                "PROGRAM": _name_of(PROGRAMID, a)}
    if table == "ztile" or table.startswith("ztile_"):
        return {"TARGETID": targetid, "TILEID": b,
                "SPGRP": _name_of(SPGRPID, a >> SPGRPVAL_BITS),
                "SPGRPVAL": a & ((1 << SPGRPVAL_BITS) - 1)}
    raise KeyError(f"no composite id in table {table!r}")


def to_int(words):
    """Python ints from (..., 2) [high, low] words (for tests and messages, not bulk)."""
    words = np.asarray(words, dtype=np.uint64).reshape(-1, 2)
    return [(int(h) << 64) | int(l) for h, l in words]


def from_int(values):
    """(N, 2) [high, low] words from Python ints < 2**128."""
    values = [int(v) for v in np.atleast_1d(values)]
    return np.array([[v >> 64, v & 0xFFFFFFFFFFFFFFFF] for v in values], dtype=np.uint64)


def ls_id(release, brickid, objid):
    """Legacy Surveys id ``(RELEASE << 40) | (BRICKID << 16) | OBJID``."""
    return ((np.asarray(release, dtype=np.int64) << 40)
            | (np.asarray(brickid, dtype=np.int64) << 16)
            | np.asarray(objid, dtype=np.int64))


#: desitarget's TARGETID bit layout: field -> (first bit, number of bits).
TARGETID_BITS = {"objid": (0, 22), "brickid": (22, 20), "release": (42, 16),
                 "mock": (58, 1), "sky": (59, 1), "gaiadr": (60, 2)}


def decode_targetid(targetid):
    """(objid, brickid, release, mock, sky, gaiadr), as desitarget decodes them."""
    t = np.asarray(targetid, dtype=np.int64)
    return tuple((t >> first) & ((1 << n) - 1) for first, n in TARGETID_BITS.values())


def no_sky(targetid):
    """True where a row is kept: TARGETID > 0 and the SKY bit (59) clear.

    The single definition of "not a sky fibre" (specprod-db ``util.no_sky``).
    """
    t = np.asarray(targetid, dtype=np.int64)
    return (t > 0) & (((t >> 59) & 1) == 0)
