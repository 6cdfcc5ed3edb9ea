"""HEALPix redshifts of a static production: HEALPix redrock files -> ``zpix`` rows.

A named (static) production such as ``fuji`` or ``iron`` coadds each target's spectra
of one survey and program over every tile, per nested HEALPix pixel (nside 64):
``healpix/{survey}/{program}/{healpix//100}/{healpix}/redrock-{survey}-{program}-
{healpix}.fits`` (findfile ``redrock_hp``, :meth:`specprod_db.paths.Paths.healpix_file`).
Each file is read directly with fitsio, like the tile files of
:mod:`specprod_db.extract.redshift` (decision 6: REDSHIFTS, the coadded FIBERMAP of the
same file, TSNR2; nothing re-coadded, desispec not imported), and gives the rows of
``zpix`` that desispec's ``read_redrock(path, group='healpix')`` gives (datamodel.md
§9.9), with the old tool's value rules:

* rows are kept where :func:`specprod_db.ids.no_sky` holds;
* REDSHIFTS, FIBERMAP and TSNR2 must be row-matched, and a TARGETID appears once;
* ``survey`` and ``program`` are those of the path; header ``SURVEY``/``PROGRAM``, when
  present, must agree; ``healpix`` and ``spgrpval`` are the header ``HPXPIXEL`` (what
  ``read_redrock`` puts in ``HEALPIX``), which must be the pixel of the path; ``spgrp``
  is ``healpix`` (a header ``SPGRP`` other than ``healpix`` fails the file: desispec
  skips it);
* the 17 targeting bit columns are FIBERMAP's (the bitwise OR over the coadded
  exposures, as desispec's ``coadd_fibermap`` writes them), 0 where the survey has none;
* missing TSNR2 columns and a missing ``MEAN_PSF_TO_FIBER_SPECFLUX`` are 0;
* DESINAME as for ``ztile`` (:func:`specprod_db.extract.redshift.desiname_column`):
  always ``radec_to_desiname(TARGET_RA, TARGET_DEC)``, a FIBERMAP DESINAME that differs
  counted (``stats['desiname_mismatch']``), a non-finite or out-of-range coordinate
  failing the file;
* ``id`` is ``(programid(PROGRAM) << 96) | (surveyid(SURVEY) << 64) | TARGETID``
  (:func:`specprod_db.ids.zpix_id`); the primary flags start at 0/False and are set by
  :func:`specprod_db.load.finalize.update_primary` over the zpix rows (decision 13).

Any bad file raises :class:`InputError` naming the file: the file fails alone.  This
module imports neither MPI nor psycopg2.
"""
import os
from typing import Optional, Tuple

import fitsio
import numpy as np

from specprod_db import ids, schema
from specprod_db.errors import InputError
from specprod_db.extract import rows
from specprod_db.extract.redshift import REDSHIFT_COLUMNS, TSNR2_COLUMNS, desiname_column
from specprod_db.extract.tile import header_dict

#: zpix columns taken from FIBERMAP under their own (upper-case) name.
_FIBERMAP = [n.upper() for n in schema.ZPIX.names
             if n.startswith(("coadd_", "mean_", "rms_", "std_"))
             or n in ("min_mjd", "max_mjd")]
_OPTIONAL_FIBERMAP = {"MEAN_PSF_TO_FIBER_SPECFLUX"}
#: Targeting bit columns: FIBERMAP's when present, else 0 (the old tool's default).
_TARGET_BITS = [n.upper() for n in schema.ZPIX.names if n.endswith("_target")]
_FLAGS = {f"{p}_{k}": 0 for p in ("sv", "main", "zcat") for k in ("nspec", "primary")}


def zpix_rows(path: str, survey: str, program: str, healpix: int,
              stats: Optional[dict] = None) -> Tuple[np.ndarray, dict]:
    """``zpix`` rows of one HEALPix redrock file; returns ``(rows, info)``.

    ``info``: ``file``, ``rows``.  ``stats`` (a dict) receives the counts of
    :func:`specprod_db.extract.rows.build` and of DESINAMEs that differ from the file's.
    """
    healpix = int(healpix)
    where = f"healpix {survey}/{program}/{healpix}: {path}"
    info = {"file": path}
    try:
        with fitsio.FITS(path) as fx:
            hdr = header_dict(fx[0].read_header())
            for hdu in ("REDSHIFTS", "FIBERMAP", "TSNR2"):
                if hdu not in fx:
                    raise InputError(f"{where}: no {hdu} HDU")
            z = fx["REDSHIFTS"].read(columns=REDSHIFT_COLUMNS)
            have = set(fx["FIBERMAP"].get_colnames())
            wanted = ["TARGETID", "TARGET_RA", "TARGET_DEC", "DESINAME"] + _FIBERMAP \
                + _TARGET_BITS
            lacking = [c for c in ["TARGETID", "TARGET_RA", "TARGET_DEC"] + _FIBERMAP
                       if c not in have and c not in _OPTIONAL_FIBERMAP]
            if lacking:
                raise InputError(f"{where}: FIBERMAP lacks column(s) {', '.join(lacking)}")
            fm = fx["FIBERMAP"].read(columns=[c for c in wanted if c in have])
            have_t = set(fx["TSNR2"].get_colnames())
            tsnr2 = fx["TSNR2"].read(columns=["TARGETID"] + [c for c in TSNR2_COLUMNS
                                                               if c in have_t])
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{where}: cannot be read: {err}") from None
    if str(hdr.get("SPGRP", "healpix")).strip() != "healpix":
        raise InputError(f"{where}: SPGRP is {hdr['SPGRP']!r}, not 'healpix'")
    pixel = int(hdr.get("HPXPIXEL", healpix))
    if pixel != healpix:
        raise InputError(f"{where}: header HPXPIXEL {pixel} differs from the pixel of the "
                         f"path ({healpix})")
    for key, value in (("SURVEY", survey), ("PROGRAM", program)):
        if key in hdr and str(hdr[key]).strip() != value:
            raise InputError(f"{where}: header {key} {hdr[key]!r} differs from the path "
                             f"({value!r})")
    for label, data in (("FIBERMAP", fm), ("TSNR2", tsnr2)):
        if not np.array_equal(z["TARGETID"], data["TARGETID"]):
            raise InputError(f"{where}: REDSHIFTS and {label} TARGETIDs are not row-matched")

    keep = ids.no_sky(z["TARGETID"])
    z, fm, tsnr2 = z[keep], fm[keep], tsnr2[keep]
    n = len(z)
    targetid = z["TARGETID"]
    if len(np.unique(targetid)) != n:
        raise InputError(f"{where}: a TARGETID appears more than once")
    try:
        zid = ids.zpix_id(program, survey, targetid)
    except (ValueError, KeyError) as err:
        raise InputError(f"{where}: {err}") from None

    cols = {"id": zid, "targetid": targetid, "survey": survey, "program": program,
            "spgrp": "healpix", "spgrpval": pixel, "healpix": pixel}
    for c in ("Z", "ZERR", "ZWARN", "CHI2", "NPIXELS", "SPECTYPE", "SUBTYPE", "NCOEFF",
              "DELTACHI2"):
        cols[c.lower()] = z[c]
    coeff = np.asarray(z["COEFF"])
    if coeff.ndim != 2:  # a scalar COEFF column (one template coefficient)
        coeff = coeff.reshape(n, -1 if n else 1)
    for k in range(10):
        cols[f"coeff_{k}"] = coeff[:, k] if k < coeff.shape[1] else 0.0
    for c in _FIBERMAP:
        cols[c.lower()] = fm[c] if c in fm.dtype.names else np.zeros(n, np.float32)
    for c in _TARGET_BITS:
        cols[c.lower()] = fm[c] if c in fm.dtype.names else 0
    for c in TSNR2_COLUMNS:
        cols[c.lower()] = tsnr2[c] if c in tsnr2.dtype.names else np.zeros(n, np.float32)
    cols["desiname"] = desiname_column(fm, where, stats)
    try:
        out = rows.build("zpix", dict(cols, **_FLAGS), n=n, stats=stats)
    except rows.RowError as err:
        raise InputError(f"{where}: {err}") from None
    # as if each row were its TARGETID's only one (the flag UPDATE writes the others)
    for name, values in schema.single_spectrum_flags(out["survey"]).items():
        out[name] = values
    info["rows"] = len(out)
    return out, info


def healpix_name(survey, program, healpix):
    """``SURVEY-PROGRAM-HEALPIX``: a HEALPix file's name in messages and stage files."""
    return f"{survey}-{program}-{int(healpix)}"


def files_of(paths, survey, program, healpix):
    """``[(name, path)]`` of a HEALPix file, for its fingerprint."""
    path = paths.healpix_file(survey, program, healpix)
    return [(os.path.basename(path), path)]
