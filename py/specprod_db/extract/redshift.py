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
* DESINAME is always computed, desiutil's ``radec_to_desiname(TARGET_RA,
  TARGET_DEC)`` (desiutil >= 3.5.0), as the old tool and datamodel §10.2 do; never
  copied from a FIBERMAP ``DESINAME`` column (files written since Jura carry one, and
  some hold wrong names: desispec#2238).  Where the file's column differs, the rows are
  counted (``stats['desiname_mismatch']``, one example in
  ``stats['desiname_mismatch_example']``; the run warns once per tile:
  :func:`desiname_mismatch`);
* a loaded row whose TARGET_RA/TARGET_DEC is non-finite or out of desiutil's range (RA
  outside [0, 360), Dec outside [-90, 90]) fails the tile, naming the file, the count
  and an example: the old tool finitized the coordinates to -9999 first, so
  ``radec_to_desiname`` raised and the tile did not load (datamodel §10.2);
* a tile none of whose petals has a redrock (or zbest) file of its own TILEID in its
  LASTNIGHT directory fails, naming the directory and what it holds (issue 20: a
  directory holding another tile's files must not turn an UPDATE into zero redshifts);
* zbest fallback: where a petal has no ``redrock-`` file, ``zbest-`` is read (HDU
  ZBEST).  Without re-coadding from the spectra file, this works only where the zbest
  file carries a row-matched, coadded FIBERMAP; its TSNR2 is 0 when absent (desispec
  would compute it from the spectra file's SCORES); otherwise the tile fails.
"""
import json
import os
import re
from typing import Any, Iterable, List, Optional, Tuple

import fitsio
import numpy as np
from desiutil.names import radec_to_desiname

from specprod_db import ids, schema
from specprod_db.errors import InputError
from specprod_db.extract import fitstable, rows
from specprod_db.extract.tile import header_dict
from specprod_db.log import get_logger
from specprod_db.paths import present

PETALS = range(10)
#: Names shown when a directory holds none of the tile's petal files.
LISTED = 5
_PETAL_FILE = re.compile(r"^(redrock|zbest)-(\d+)-(\d+)-thru(\d+)\.fits$")

#: The TSNR2 HDU's columns that are ztile (and zpix) columns.
TSNR2_COLUMNS = [c.name.upper() for c in schema.ZTILE.columns if c.name.startswith("tsnr2_")]
#: The columns read from the REDSHIFTS HDU of a redrock (and zpix) file.
REDSHIFT_COLUMNS = ["TARGETID", "CHI2", "COEFF", "Z", "ZERR", "ZWARN", "NPIXELS",
                    "SPECTYPE", "SUBTYPE", "NCOEFF", "DELTACHI2"]
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
    from specprod_db.extract.afterburner import afterburner_files
    out = []
    for petal in PETALS:
        path = petal_file(paths, tileid, lastnight, petal)
        out.append((os.path.basename(path), path) if path else (f"petal-{petal}", None))
        if path:
            out.extend(afterburner_files(paths, tileid, lastnight, petal))
    return out


def ztile_rows(paths, tileid: int, lastnight: int, survey: str, program: str,
               stats: Optional[dict] = None) -> Tuple[np.ndarray, dict]:
    """``ztile`` rows of tile ``tileid`` from its cumulative files of ``lastnight``.

    Returns ``(ztile, info)``; ``info`` has ``files`` (petal -> path read),
    ``missing_petals``, ``zbest_petals``, ``rows`` and ``targetids`` (petal -> the
    TARGETID column of its REDSHIFTS/ZBEST HDU, every row as read, sky included: what
    the afterburners are row-matched to, :func:`specprod_db.extract.afterburner.afterburner_rows`,
    which then need not open the petal file again).  A tile with no petal file of
    its own TILEID raises :class:`InputError` naming the directory and what it holds
    (:func:`no_petal_file`); so does any bad petal file, naming tile and file.
    """
    log = get_logger()
    tileid, lastnight = int(tileid), int(lastnight)
    info: dict = {"files": {}, "missing_petals": [], "zbest_petals": [], "targetids": {}}
    parts = []
    for petal in PETALS:
        path = petal_file(paths, tileid, lastnight, petal)
        if path is None:
            info["missing_petals"].append(petal)
            continue
        info["files"][petal] = path
        if os.path.basename(path).startswith("zbest"):
            info["zbest_petals"].append(petal)
        part, info["targetids"][petal] = _read_petal(path, tileid, lastnight, survey,
                                                     program, stats)
        parts.append(part)
    if not parts:
        raise InputError(no_petal_file(paths.cumulative_dir(tileid, lastnight), tileid))
    if info["missing_petals"]:
        log.warning("tile %d: no redrock or zbest file for petal(s) %s in %s", tileid,
                    info["missing_petals"], paths.cumulative_dir(tileid, lastnight))
    out = np.concatenate(parts)
    info["rows"] = len(out)
    return out, info


def no_petal_file(directory: str, tileid: int) -> str:
    """The message of a tile none of whose petals has a redrock or zbest file in its
    cumulative ``directory``: what the directory holds instead (the other tiles whose
    petal files are there, a few names), or that it is empty or absent."""
    where = f"tile {tileid}: no redrock or zbest file of tile {tileid} in {directory}"
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return f"{where}: the directory does not exist"
    except OSError as err:
        return f"{where}: the directory cannot be read: {err.strerror or err}"
    if not names:
        return f"{where}: the directory is empty"
    shown = ", ".join(names[:LISTED]) + (", ..." if len(names) > LISTED else "")
    found = f"{where}: it holds {len(names)} file(s): {shown}"
    others = sorted({int(m.group(3)) for m in map(_PETAL_FILE.match, names) if m})
    if others:
        found += (f" (petal files of tile(s) {', '.join(map(str, others))}: a copy or link "
                  f"of another tile's directory?)")
    return found


def read_petal(path: str, tileid: int, lastnight: int, survey: str, program: str,
               stats: Optional[dict] = None) -> np.ndarray:
    """``ztile`` rows of one petal file (see the module docstring for the rules)."""
    return _read_petal(path, tileid, lastnight, survey, program, stats)[0]


def _petal_hdus(fx: Any, where: str, zhdu: str, zbest: bool) -> tuple:
    """REDSHIFTS (ZBEST), FIBERMAP, EXP_FIBERMAP and TSNR2 of a petal file."""
    if zhdu not in fx:
        raise InputError(f"{where}: no {zhdu} HDU")
    z = fx[zhdu].read(columns=REDSHIFT_COLUMNS)
    if "FIBERMAP" not in fx:
        raise InputError(f"{where}: no FIBERMAP HDU"
                         + (" (re-coadding zbest inputs is not supported)"
                            if zbest else ""))
    fm_have = set(fx["FIBERMAP"].get_colnames())
    optional = {"TILEID", "FIRSTNIGHT", "LASTNIGHT", "DESINAME"} | _OPTIONAL_FIBERMAP
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
        tsnr2 = fx["TSNR2"].read(columns=["TARGETID"] + [c for c in TSNR2_COLUMNS
                                                          if c in have])
    return z, fm, exp, tsnr2


def _read_petal(path: str, tileid: int, lastnight: int, survey: str, program: str,
                stats: Optional[dict] = None) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`read_petal`'s rows and the TARGETID column of the file's REDSHIFTS (ZBEST)
    HDU, every row."""
    name = os.path.basename(path)
    where = f"tile {tileid}: {path}"
    zbest = name.startswith("zbest")
    zhdu = "ZBEST" if zbest else "REDSHIFTS"
    try:
        hdr = header_dict(fitsio.read_header(path, ext=0))
        z, fm, exp, tsnr2 = fitstable.read_tables(path, _petal_hdus, where, zhdu, zbest)
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

    all_targetids = np.array(z["TARGETID"])
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
    # a petal of sky fibres only keeps no row (reshape cannot infer -1 for it)
    coeff = np.asarray(z["COEFF"]).reshape(n, -1) if n else np.zeros((0, 10))
    for k in range(10):
        cols[f"coeff_{k}"] = coeff[:, k] if k < coeff.shape[1] else 0.0
    for c in _FIBERMAP:
        cols[c.lower()] = fm[c] if c in fm.dtype.names else np.zeros(n, np.float32)
    for c in TSNR2_COLUMNS:
        cols[c.lower()] = tsnr2[c][keep] if tsnr2 is not None and c in tsnr2.dtype.names \
            else np.zeros(n, np.float32)
    cols["desiname"] = desiname_column(fm, where, stats)
    primary = {f"{p}_{k}": 0 for p in ("sv", "main", "zcat") for k in ("nspec", "primary")}
    try:
        out = rows.build("ztile", dict(cols, **primary), n=n, stats=stats)
    except rows.RowError as err:
        raise InputError(f"{where}: {err}") from None
    # staged as if each row were its TARGETID's only one: the flag UPDATE after the
    # COPY then writes only the rows of TARGETIDs observed more than once
    for name, values in schema.single_spectrum_flags(out["survey"]).items():
        out[name] = values
    return out, all_targetids


def desiname_column(fm: np.ndarray, where: str, stats: Optional[dict] = None) -> np.ndarray:
    """The DESINAMEs of a FIBERMAP's rows: :func:`desinames` of TARGET_RA/TARGET_DEC,
    never its DESINAME column.  Where it has one and a row's value differs, the rows are
    counted in ``stats['desiname_mismatch']`` and the first kept as
    ``stats['desiname_mismatch_example']`` (TARGETID, the file's name, the computed
    one), for :func:`desiname_mismatch`."""
    names = desinames(fm["TARGET_RA"], fm["TARGET_DEC"], where, fm["TARGETID"])
    if "DESINAME" in fm.dtype.names and stats is not None:
        given = np.char.strip(np.asarray(fm["DESINAME"]).astype("U"))
        differ = np.flatnonzero(given != names)
        if len(differ):
            stats["desiname_mismatch"] = stats.get("desiname_mismatch", 0) + len(differ)
            k = differ[0]
            stats.setdefault("desiname_mismatch_example", json.dumps(
                [int(fm["TARGETID"][k]), str(given[k]), str(names[k]),
                 os.path.basename(where.split(": ", 1)[-1])]))
    return names


def desiname_mismatch(stats: dict) -> Optional[Tuple[int, str]]:
    """``(rows, message)`` when :func:`desiname_column` counted rows whose file's
    DESINAME differs from the computed one, else None: the run's warning
    ``desiname_mismatch`` (one log line per tile or HEALPix file)."""
    n = int((stats or {}).get("desiname_mismatch", 0))
    if not n:
        return None
    message = (f"{n} row(s) whose FIBERMAP DESINAME differs from radec_to_desiname("
               f"TARGET_RA, TARGET_DEC); the computed name is loaded (desispec#2238)")
    try:
        targetid, given, computed, name = json.loads(stats["desiname_mismatch_example"])
        message += f", e.g. TARGETID {targetid} in {name}: file {given!r}, computed " \
                   f"{computed!r}"
    except (KeyError, TypeError, ValueError):
        pass
    return n, message


def desinames(ra: np.ndarray, dec: np.ndarray, where: str = "coordinates",
              targetid: Optional[np.ndarray] = None) -> np.ndarray:
    """desiutil's ``radec_to_desiname`` of every row (``U22``).  Any non-finite or
    out-of-range coordinate (for which desiutil raises, as it did in the old tool on
    the finitized -9999) raises :class:`InputError` naming ``where``, the count and
    the first such row."""
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        good = np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) \
            & (dec >= -90) & (dec <= 90)
    if not good.all():
        k = int(np.flatnonzero(~good)[0])
        row = f"TARGETID {int(targetid[k])}" if targetid is not None else f"row {k}"
        raise InputError(f"{where}: {int((~good).sum())} row(s) with a non-finite or "
                         f"out-of-range TARGET_RA/TARGET_DEC, e.g. {row}: RA {float(ra[k])}, "
                         f"Dec {float(dec[k])}; radec_to_desiname cannot name them (the old "
                         f"tool failed such a tile too)")
    out = np.zeros(len(ra), dtype="U22")
    if len(ra):
        out[:] = radec_to_desiname(ra, dec)
    return out


def petal_of(name: str) -> Optional[int]:
    """The petal of a redrock or zbest file's basename, else None."""
    m = _PETAL_FILE.match(name)
    return int(m.group(2)) if m else None


def lost_petals(recorded: Optional[str], missing: Iterable[int]) -> List[int]:
    """Petals that have no file now (``missing``) but had one when the tile was last
    loaded (its recorded redrock fingerprint,
    :meth:`specprod_db.load.fingerprints.Fingerprint.to_text`): their ``ztile`` rows go
    with the UPDATE (the tile then holds what a fresh load of today's files gives),
    worth a warning naming them."""
    from specprod_db.load.fingerprints import Fingerprint
    fp = Fingerprint.from_text(recorded)
    if fp is None:
        return []
    before = {petal_of(f.name) for f in fp.files if not f.missing}
    return sorted(p for p in set(int(p) for p in missing) if p in before)
