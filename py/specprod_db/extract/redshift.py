"""Tile redshifts: cumulative redrock files -> ``ztile`` rows, DESINAME added here.

The tile's ten petal files ``tiles/cumulative/{TILEID}/{LASTNIGHT}/redrock-{SP}-{TILEID}-
thru{LASTNIGHT}.fits`` are read directly with fitsio (design decision 6): REDSHIFTS, the
coadded FIBERMAP of the same file, EXP_FIBERMAP (for FIRSTNIGHT and the TILEID check) and
TSNR2.  Nothing is re-coadded and desispec is not imported.  This module imports
neither MPI nor psycopg2.

Rules, as desispec 0.70.0 ``read_redrock`` and the old per-tile loader apply them
(datamodel.md §7, §9.10, §10.2):

* rows are kept where :func:`specprod_db.ids.no_sky` holds;
* REDSHIFTS, FIBERMAP and TSNR2 must be row-matched (same TARGETIDs in the same order);
* missing TSNR2 columns are 0; a missing ``MEAN_PSF_TO_FIBER_SPECFLUX`` is 0;
* ``firstnight`` is FIBERMAP ``FIRSTNIGHT`` when present, else the minimum EXP_FIBERMAP
  ``NIGHT`` of *this petal's* file (so it can differ between petals, as in the old
  loader); ``lastnight`` is FIBERMAP ``LASTNIGHT``, else header ``NIGHT``, else the
  ``thruYYYYMMDD`` of the file name; ``spgrpval`` is header ``SPGRPVAL`` (else lastnight);
* TILEID: the header TILEID, every EXP_FIBERMAP TILEID and every FIBERMAP TILEID must
  be the tile of the path; any mismatch fails the tile (:class:`InputError`);
* a header ``SPGRP`` other than ``cumulative`` fails the tile (desispec returns None and
  the old loader then failed);
* DESINAME is FIBERMAP ``DESINAME`` when present, else desiutil's
  ``radec_to_desiname(TARGET_RA, TARGET_DEC)`` computed on the coordinates as read,
  before finitize.  Where a coordinate is non-finite the name is ``'-' * 22``, as
  ``read_redrock`` writes; where it is finite but out of range (RA outside [0, 360),
  Dec outside [-90, 90]), for which desiutil raises and desispec would fail the whole
  file, the name is also ``'-' * 22`` and the count is reported (``info``, warning);
* zbest fallback: where a petal has no ``redrock-`` file, ``zbest-`` is read (HDU
  ZBEST).  Without re-coadding from the spectra file, this works only where the zbest
  file carries a row-matched, coadded FIBERMAP; its TSNR2 is 0 when absent (desispec
  would compute it from the spectra file's SCORES); otherwise the tile fails.
"""
import os

import fitsio
import numpy as np
from desiutil.names import radec_to_desiname

from .. import ids, rows, schema
from ..log import get_logger
from ..paths import InputError, present
from .tile import _header_dict

PETALS = range(10)
DUMMY_DESINAME = "-" * 22

_TSNR2 = [c.name.upper() for c in schema.ZTILE.columns if c.name.startswith("tsnr2_")]
_REDSHIFTS = ["TARGETID", "CHI2", "COEFF", "Z", "ZERR", "ZWARN", "NPIXELS", "SPECTYPE",
              "SUBTYPE", "NCOEFF", "DELTACHI2"]
#: ztile columns taken from FIBERMAP under their own (upper-case) name.
_FIBERMAP = [n.upper() for n in schema.ZTILE.names
             if n.startswith(("coadd_", "mean_", "rms_", "std_"))
             or n in ("min_mjd", "max_mjd")]
_OPTIONAL_FIBERMAP = {"MEAN_PSF_TO_FIBER_SPECFLUX"}


def petal_file(paths, tileid, lastnight, petal):
    """The petal's ``redrock-`` file, else its ``zbest-`` file, else None."""
    for prefix in ("redrock", "zbest"):
        path = paths.redrock_file(tileid, lastnight, petal, prefix=prefix)
        if present(path):  # there, even if unreadable: the tile then fails, naming it
            return path
    return None


def redrock_files(paths, tileid, lastnight):
    """``[(name, path or None)]`` of the tile's petal files, for its fingerprint: the
    file's basename, or ``petal-P`` when the petal has no file (design decision 2: a
    petal file appearing, disappearing or changing changes the fingerprint); after each
    petal file, its three afterburner files (:mod:`specprod_db.extract.afterburner`),
    path None where absent, so that an afterburner rewritten, added or removed changes
    the fingerprint too (an UPDATE of the tile)."""
    from .afterburner import afterburner_files
    out = []
    for petal in PETALS:
        path = petal_file(paths, tileid, lastnight, petal)
        out.append((os.path.basename(path), path) if path else (f"petal-{petal}", None))
        if path:
            out.extend(afterburner_files(paths, tileid, lastnight, petal))
    return out


def ztile_rows(paths, tileid, lastnight, survey, program, stats=None):
    """``ztile`` rows of tile ``tileid`` from its cumulative files of ``lastnight``.

    Returns ``(ztile, info)``; ``info`` has ``files`` (petal -> path read),
    ``missing_petals``, ``zbest_petals``, ``dummy_desiname`` (rows given ``'-'*22``)
    and ``rows``.  A tile with no petal file gives an empty array (logged), as the old
    loader did.  Any bad petal file raises :class:`InputError` naming tile and file.
    """
    log = get_logger()
    tileid, lastnight = int(tileid), int(lastnight)
    info = {"files": {}, "missing_petals": [], "zbest_petals": [], "dummy_desiname": 0}
    parts = []
    for petal in PETALS:
        path = petal_file(paths, tileid, lastnight, petal)
        if path is None:
            info["missing_petals"].append(petal)
            continue
        info["files"][petal] = path
        if os.path.basename(path).startswith("zbest"):
            info["zbest_petals"].append(petal)
        parts.append(read_petal(path, tileid, lastnight, survey, program, stats, info))
    if info["missing_petals"]:
        log.warning("tile %d: no redrock or zbest file for petal(s) %s in %s", tileid,
                    info["missing_petals"], paths.cumulative_dir(tileid, lastnight))
    out = np.concatenate(parts) if parts else schema.ZTILE.empty(0)
    info["rows"] = len(out)
    return out, info


def read_petal(path, tileid, lastnight, survey, program, stats=None, info=None):
    """``ztile`` rows of one petal file (see the module docstring for the rules)."""
    name = os.path.basename(path)
    where = f"tile {tileid}: {path}"
    zbest = name.startswith("zbest")
    try:
        with fitsio.FITS(path) as fx:
            hdr = _header_dict(fx[0].read_header())
            zhdu = "ZBEST" if zbest else "REDSHIFTS"
            if zhdu not in fx:
                raise InputError(f"{where}: no {zhdu} HDU")
            z = fx[zhdu].read(columns=_REDSHIFTS)
            if "FIBERMAP" not in fx:
                raise InputError(f"{where}: no FIBERMAP HDU"
                                 + (" (re-coadding zbest inputs is not supported)"
                                    if zbest else ""))
            fm_have = set(fx["FIBERMAP"].get_colnames())
            optional = {"TILEID", "FIRSTNIGHT", "LASTNIGHT", "DESINAME"} \
                | _OPTIONAL_FIBERMAP
            fm_cols = ["TARGETID", "TARGET_RA", "TARGET_DEC"] + _FIBERMAP \
                + sorted({"TILEID", "FIRSTNIGHT", "LASTNIGHT", "DESINAME"})
            lacking = [c for c in fm_cols if c not in fm_have and c not in optional]
            if lacking:
                raise InputError(f"{where}: FIBERMAP lacks column(s) {', '.join(lacking)}")
            fm = fx["FIBERMAP"].read(columns=[c for c in fm_cols if c in fm_have])
            exp = None
            if "EXP_FIBERMAP" in fx:
                exp = fx["EXP_FIBERMAP"].read(columns=["NIGHT", "TILEID"])
            tsnr2 = None
            if "TSNR2" in fx:
                have = set(fx["TSNR2"].get_colnames())
                tsnr2 = fx["TSNR2"].read(columns=["TARGETID"] + [c for c in _TSNR2
                                                                  if c in have])
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{where}: cannot be read: {err}") from None
    if hdr.get("SPGRP", "cumulative").strip() != "cumulative":
        raise InputError(f"{where}: SPGRP is {hdr['SPGRP']!r}, not 'cumulative'")
    if "TILEID" in hdr and int(hdr["TILEID"]) != tileid:
        raise InputError(f"{where}: header TILEID {hdr['TILEID']} differs from the tile "
                         f"of the path ({tileid})")
    if not np.array_equal(z["TARGETID"], fm["TARGETID"]):
        raise InputError(f"{where}: {zhdu} and FIBERMAP TARGETIDs are not row-matched")
    if tsnr2 is None and not zbest:
        raise InputError(f"{where}: no TSNR2 HDU")
    if tsnr2 is not None and not np.array_equal(z["TARGETID"], tsnr2["TARGETID"]):
        raise InputError(f"{where}: {zhdu} and TSNR2 TARGETIDs are not row-matched")
    for label, data in (("EXP_FIBERMAP", exp), ("FIBERMAP", fm)):
        if data is not None and "TILEID" in data.dtype.names \
                and (data["TILEID"] != tileid).any():
            other = sorted(set(data["TILEID"][data["TILEID"] != tileid].tolist()))
            raise InputError(f"{where}: {label} TILEID {other} differs from the tile of "
                             f"the path ({tileid})")

    n_all = len(z)
    if "FIRSTNIGHT" in fm.dtype.names:
        firstnight = fm["FIRSTNIGHT"]
    elif exp is not None and len(exp):
        firstnight = np.full(n_all, exp["NIGHT"].min(), dtype=np.int32)
    else:
        raise InputError(f"{where}: neither FIBERMAP FIRSTNIGHT nor EXP_FIBERMAP NIGHT")
    if "LASTNIGHT" in fm.dtype.names:
        lastnight_col = fm["LASTNIGHT"]
    elif "NIGHT" in hdr:
        lastnight_col = np.full(n_all, int(hdr["NIGHT"]), dtype=np.int32)
    else:
        lastnight_col = np.full(n_all, int(name.split("-")[-1].split(".")[0]
                                           .replace("thru", "")), dtype=np.int32)
    spgrpval = int(hdr["SPGRPVAL"]) if "SPGRPVAL" in hdr else int(lastnight_col[0]) \
        if n_all else lastnight

    keep = ids.no_sky(z["TARGETID"])
    z, fm = z[keep], fm[keep]
    firstnight, lastnight_col = firstnight[keep], lastnight_col[keep]
    n = len(z)
    targetid = z["TARGETID"]
    try:
        zid = ids.ztile_id("cumulative", spgrpval, tileid, targetid)
        tpid = ids.target_id(survey, tileid, targetid)
    except (ValueError, KeyError) as err:
        raise InputError(f"{where}: {err}") from None

    cols = {"id": zid, "targetphotid": tpid, "targetid": targetid,
            "survey": survey, "program": program, "spgrp": "cumulative",
            "spgrpval": spgrpval, "tileid": tileid, "firstnight": firstnight,
            "lastnight": lastnight_col}
    for c in ("Z", "ZERR", "ZWARN", "CHI2", "NPIXELS", "SPECTYPE", "SUBTYPE", "NCOEFF",
              "DELTACHI2"):
        cols[c.lower()] = z[c]
    coeff = np.asarray(z["COEFF"]).reshape(n, -1)
    for k in range(10):
        cols[f"coeff_{k}"] = coeff[:, k] if k < coeff.shape[1] else 0.0
    for c in _FIBERMAP:
        cols[c.lower()] = fm[c] if c in fm.dtype.names else np.zeros(n, np.float32)
    for c in _TSNR2:
        cols[c.lower()] = tsnr2[c][keep] if tsnr2 is not None and c in tsnr2.dtype.names \
            else np.zeros(n, np.float32)
    cols["desiname"], ndummy = desiname_column(fm, where)
    if ndummy and info is not None:
        info["dummy_desiname"] += ndummy
    primary = {f"{p}_{k}": 0 for p in ("sv", "main", "zcat") for k in ("nspec", "primary")}
    try:
        return rows.build("ztile", dict(cols, **primary), n=n, stats=stats)
    except rows.RowError as err:
        raise InputError(f"{where}: {err}") from None


def desiname_column(fm, where):
    """``(names, n_dummy)`` of a FIBERMAP: its DESINAME column when it has one, else
    :func:`desinames` of TARGET_RA/TARGET_DEC (a warning naming ``where`` counts the
    rows given the dummy name)."""
    if "DESINAME" in fm.dtype.names:
        return fm["DESINAME"], 0
    names, ndummy = desinames(fm["TARGET_RA"], fm["TARGET_DEC"])
    if ndummy:
        get_logger().warning("%s: %d rows with non-finite or out-of-range TARGET_RA/"
                             "TARGET_DEC get DESINAME %r", where, ndummy, DUMMY_DESINAME)
    return names, ndummy


def desinames(ra, dec):
    """``(names, n_dummy)``: desiutil DESINAMEs, ``'-'*22`` where a coordinate is
    non-finite or out of desiutil's range."""
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    good = np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) \
        & (dec >= -90) & (dec <= 90)
    out = np.full(len(ra), DUMMY_DESINAME, dtype="U22")
    if good.any():
        out[good] = radec_to_desiname(ra[good], dec[good])
    return out, int((~good).sum())
