"""Tile afterburners: the ``emline-``, ``qso_mgii-`` and ``qso_qn-`` files of each petal
-> ``ztile_emline``, ``ztile_qso_mgii``, ``ztile_qso_qn`` rows (datamodel.md §7.8).

Each file sits next to the petal's cumulative redrock (or zbest) file, named by replacing
its prefix, and is row-matched to its REDSHIFTS (ZBEST) HDU.  Rules:

* a missing file is not an error: its rows are absent, the file is listed in
  ``info["missing"]`` and counted in ``stats["missing_afterburners"]`` (logged);
* a file present but unreadable, without its HDU or a column, or whose TARGETIDs are
  not those of REDSHIFTS in the same order fails the tile (:class:`InputError` naming
  tile and file);
* rows are those of the petal's ztile rows (:func:`specprod_db.ids.no_sky`), each with
  the ``id`` of its ztile row; values follow :func:`specprod_db.extract.rows.build` (finitize).

Only the columns ``read_redrock`` (desispec 0.70) reads are loaded; the files hold more.
"""
import os

import fitsio
import numpy as np

from specprod_db import ids
from specprod_db.errors import InputError
from specprod_db.extract import fitstable, rows
from specprod_db.log import get_logger
from specprod_db.paths import present
from specprod_db.schema import table as schema_table

#: table -> (file prefix, HDU, columns read besides TARGETID)
AFTERBURNERS = {
    "ztile_emline": ("emline", "EMLINEFIT", ["OII_FLUX", "OII_FLUX_IVAR"]),
    "ztile_qso_mgii": ("qso_mgii", "MGII", ["IS_QSO_MGII"]),
    "ztile_qso_qn": ("qso_qn", "QN_RR", [
        "IS_QSO_QN_NEW_RR", "C_LYA", "C_CIV", "C_CIII", "C_MgII", "C_Hbeta", "C_Halpha",
        "Z_NEW", "ZERR_NEW", "ZWARN_NEW", "SPECTYPE_NEW", "SUBTYPE_NEW", "CHI2_NEW",
        "DELTACHI2_NEW", "COEFF_NEW"]),
}


def afterburner_files(paths, tileid, lastnight, petal):
    """``[(name, path or None)]`` of a petal's three afterburner files (for the tile's
    redrock fingerprint), named after the redrock file; None where absent."""
    out = []
    for prefix, _, _ in AFTERBURNERS.values():
        path = paths.redrock_file(tileid, lastnight, petal, prefix=prefix)
        out.append((os.path.basename(path), path if present(path) else None))
    return out


def afterburner_rows(paths, tileid, lastnight, petal_files, ztile, stats=None,
                     redshift_targetids=None):
    """``({table: rows}, info)`` of a tile's afterburners.

    ``petal_files``: petal -> redrock/zbest path read for ztile (``ztile_rows``'s
    ``info["files"]``); ``ztile``: the tile's ztile rows (for the ids);
    ``redshift_targetids``: petal -> the TARGETIDs of that file's REDSHIFTS (ZBEST) HDU
    as ``ztile_rows`` read them (its ``info["targetids"]``), else each petal file's are
    read again.
    ``info["missing"]`` lists the absent files.
    """
    tileid, lastnight = int(tileid), int(lastnight)
    info = {"missing": []}
    parts = {name: [] for name in AFTERBURNERS}
    order = np.argsort(ztile["targetid"], kind="stable")
    zt_sorted, zid_sorted = ztile["targetid"][order], ztile["id"][order]
    for petal in sorted(petal_files):
        path = petal_files[petal]
        targetids = (redshift_targetids or {}).get(petal)
        for name, (prefix, hdu, columns) in AFTERBURNERS.items():
            ab = paths.redrock_file(tileid, lastnight, petal, prefix=prefix)
            if not present(ab):  # an unreadable one fails the tile (its hash)
                info["missing"].append(os.path.basename(ab))
                continue
            if targetids is None:
                targetids = _redshift_targetids(path, tileid)
            parts[name].append(read_afterburner(ab, name, hdu, columns, tileid, targetids,
                                                zt_sorted, zid_sorted, stats))
    if info["missing"]:
        get_logger().info("tile %d: %d afterburner file(s) absent, their rows not loaded: "
                          "%s", tileid, len(info["missing"]), ", ".join(info["missing"]))
        if stats is not None:
            stats["missing_afterburners"] = stats.get("missing_afterburners", 0) \
                + len(info["missing"])
    out = {name: np.concatenate(p) if p else schema_table(name).empty(0)
           for name, p in parts.items()}
    return out, info


def _redshift_targetids(path, tileid):
    hdu = "ZBEST" if os.path.basename(path).startswith("zbest") else "REDSHIFTS"
    try:
        return fitsio.read(path, ext=hdu, columns=["TARGETID"])["TARGETID"]
    except Exception as err:
        raise InputError(f"tile {tileid}: {path}: cannot be read: {err}") from None


def _read_hdu(fx, where, hdu, columns):
    if hdu not in fx:
        raise InputError(f"{where}: no {hdu} HDU")
    have = set(fx[hdu].get_colnames())
    lacking = [c for c in ["TARGETID"] + columns if c not in have]
    if lacking:
        raise InputError(f"{where}: {hdu} lacks column(s) {', '.join(lacking)}")
    return fx[hdu].read(columns=["TARGETID"] + columns)


def read_afterburner(path, table, hdu, columns, tileid, targetids, zt_sorted, zid_sorted,
                     stats=None):
    """Rows of ``table`` from one afterburner file row-matched to ``targetids``."""
    where = f"tile {tileid}: {path}"
    try:
        data = fitstable.read_tables(path, _read_hdu, where, hdu, columns)
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{where}: cannot be read: {err}") from None
    if not np.array_equal(data["TARGETID"], targetids):
        raise InputError(f"{where}: {hdu} TARGETIDs are not row-matched to the redrock "
                         "file's REDSHIFTS")
    data = data[ids.no_sky(data["TARGETID"])]
    n = len(data)
    targetid = data["TARGETID"]
    pos = np.searchsorted(zt_sorted, targetid)
    pos = np.minimum(pos, max(len(zt_sorted) - 1, 0))
    if n and (len(zt_sorted) == 0 or (zt_sorted[pos] != targetid).any()):
        raise InputError(f"{where}: TARGETIDs without a ztile row")
    cols = {"id": zid_sorted[pos] if n else np.zeros((0, 2), np.uint64),
            "targetid": targetid, "tileid": tileid}
    for c in columns:
        if c == "COEFF_NEW":
            coeff = np.asarray(data[c]).reshape(n, -1) if n else np.zeros((0, 10))
            for k in range(10):
                cols[f"coeff_new_{k}"] = coeff[:, k] if k < coeff.shape[1] else 0.0
        else:
            cols[c.lower()] = data[c]
    try:
        return rows.build(table, cols, n=n, stats=stats)
    except rows.RowError as err:
        raise InputError(f"{where}: {err}") from None
