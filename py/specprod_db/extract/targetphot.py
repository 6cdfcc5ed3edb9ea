"""Targeting photometry of one tile's potential targets (``targetphot_onetile``).

Our own equivalent of desispec's ``desispec.io.photo.gather_targetphot`` for one tile
(datamodel.md §4.5), without desispec at run time:

1. the PRIMARY header of the tile's fiberassign file names the catalogs: ``TARG``,
   ``TARG2``..., ``SCND``, ``SCND2``..., ``TOO``, ``TOO2``... (a family stops at the
   first missing keyword or at a value ``-``); tile 80615 also gets the cmx Gaia
   supplemental directory, which its header does not record;
2. each value is rewritten into this tree
   (:meth:`specprod_db.paths.Paths.rewrite_catalog_path`); paths that do not exist are dropped, as desispec drops them (decision 11: real headers
   name catalogs that were moved or never written), with a warning naming the tile, the
   keyword and the path, and counted in ``stats['missing_catalogs']``; if none is left
   the tile fails (desispec fails too); the rest is de-duplicated and sorted
   alphabetically;
3. a file whose name contains ``ToO`` (or ends in ``.ecsv``) is an ECSV ledger (read as
   astropy's ``ascii.ecsv`` reader reads it, by :mod:`specprod_db.extract.ecsv`), any other file
   a FITS catalog (secondary targets), and a directory holds primary targets split in nested HEALPix files
   ``{prefix}hp-{pix}.fits``.  (desispec tests for ``secondary`` and ``ToO`` anywhere in
   the path, which misreads every catalog when a parent directory, e.g. ``$DESI_ROOT``,
   has such a name; on DESI paths the two rules agree.)  ``FILENSID``
   is read from HDU1 of the first (sorted) ``*-hp-*.fits`` file, the pixel of each target
   with finite RA/Dec is computed at that nside, and the single-pixel files of those
   pixels that exist are read.  Quirk kept from desispec: files covering several pixels
   (comma-joined names) are never found this way;
4. in each FITS file the table is the first HDU whose EXTNAME contains ``TARGETS``
   (``TARGETS``, ``SCND_TARGETS``), else HDU 1; its TARGETID column is read, then only
   the wanted rows, and only the columns of the targetphot data model that exist
   (copied by name; the others stay zero/blank);
5. the first occurrence of a TARGETID wins, in the sorted path order (so
   ``.../survey/.../ToO.ecsv`` precedes ``.../target/...`` and ``resolve`` precedes
   ``secondary``); within one directory, files are taken in string order of their
   names, as desispec's ``np.unique`` orders them;
6. one output row per input target, in input order, TARGETID always set; targets found
   nowhere are all zeros/blank (PHOTSYS '', RA = DEC = 0);
7. a targeting-bit column (``*_TARGET``) a catalog lacks is 0 in the rows taken from it,
   as desispec's ``gather_targetphot`` leaves it (its data model's zeros); what a file of
   its kind carries (:func:`lacking_bit_columns`: datamodel.md §4.2-4.4) and lacks is
   logged, naming tile, file and columns, and the rows counted in
   ``stats['missing_target_bits']`` (the run's ``warnings.missing_target_bits``).

The output has the 122 columns of desispec's ``targetphot_datamodel`` (§4.6) with
native byte order and bytes (``S``) strings instead of desispec's unicode.

``targetphot_onetile`` is two steps, which the load runs apart so that a wave of tiles
reads each catalog file once (:mod:`specprod_db.load.catalogs`): :func:`catalog_plan` (steps
1-3: the catalogs, and for a primary directory the existing files of the pixels of all
the targets with finite RA/Dec; FILENSID is read once per process and file) and
:func:`assemble` (steps 3-6 over a ``read(file, kind, want)``: the files of the pixels
of the targets still unfound, as desispec computes them, so the same files are read in
the same order).
"""
import glob
import os

import numpy as np

from specprod_db import ids
from specprod_db.extract import rows
from specprod_db.extract.healpix import radec2pix
from specprod_db.errors import InputError
from specprod_db.log import get_logger
from specprod_db.paths import present
from specprod_db.schema import table as _table

#: desispec's ``targetphot_datamodel`` (datamodel.md §4.6): ``dtype[shape]: NAMES``.
_DATAMODEL = """
i2: RELEASE
i4: BRICKID
S8: BRICKNAME
i4: BRICK_OBJID
S4: MORPHTYPE
f8: RA
f4: RA_IVAR
f8: DEC
f4: DEC_IVAR
f4[5]: DCHISQ
f4: EBV FLUX_G FLUX_R FLUX_Z FLUX_IVAR_G FLUX_IVAR_R FLUX_IVAR_Z
f4: MW_TRANSMISSION_G MW_TRANSMISSION_R MW_TRANSMISSION_Z FRACFLUX_G FRACFLUX_R FRACFLUX_Z
f4: FRACMASKED_G FRACMASKED_R FRACMASKED_Z FRACIN_G FRACIN_R FRACIN_Z
i2: NOBS_G NOBS_R NOBS_Z
f4: PSFDEPTH_G PSFDEPTH_R PSFDEPTH_Z GALDEPTH_G GALDEPTH_R GALDEPTH_Z
f4: FLUX_W1 FLUX_W2 FLUX_W3 FLUX_W4 FLUX_IVAR_W1 FLUX_IVAR_W2 FLUX_IVAR_W3 FLUX_IVAR_W4
f4: MW_TRANSMISSION_W1 MW_TRANSMISSION_W2 MW_TRANSMISSION_W3 MW_TRANSMISSION_W4
i2: ALLMASK_G ALLMASK_R ALLMASK_Z
f4: FIBERFLUX_G FIBERFLUX_R FIBERFLUX_Z FIBERTOTFLUX_G FIBERTOTFLUX_R FIBERTOTFLUX_Z
f4: REF_EPOCH
u1: WISEMASK_W1 WISEMASK_W2
i2: MASKBITS
f4[15]: LC_FLUX_W1 LC_FLUX_W2 LC_FLUX_IVAR_W1 LC_FLUX_IVAR_W2
i2[15]: LC_NOBS_W1 LC_NOBS_W2
f8[15]: LC_MJD_W1 LC_MJD_W2
f4: SHAPE_R SHAPE_E1 SHAPE_E2 SHAPE_R_IVAR SHAPE_E1_IVAR SHAPE_E2_IVAR SERSIC SERSIC_IVAR
i8: REF_ID
S2: REF_CAT
f4: GAIA_PHOT_G_MEAN_MAG GAIA_PHOT_G_MEAN_FLUX_OVER_ERROR
f4: GAIA_PHOT_BP_MEAN_MAG GAIA_PHOT_BP_MEAN_FLUX_OVER_ERROR
f4: GAIA_PHOT_RP_MEAN_MAG GAIA_PHOT_RP_MEAN_FLUX_OVER_ERROR
f4: GAIA_PHOT_BP_RP_EXCESS_FACTOR GAIA_ASTROMETRIC_EXCESS_NOISE
?: GAIA_DUPLICATED_SOURCE
f4: GAIA_ASTROMETRIC_SIGMA5D_MAX
u1: GAIA_ASTROMETRIC_PARAMS_SOLVED
f4: PARALLAX PARALLAX_IVAR PMRA PMRA_IVAR PMDEC PMDEC_IVAR
S1: PHOTSYS
i8: TARGETID
f8: SUBPRIORITY
i8: OBSCONDITIONS PRIORITY_INIT NUMOBS_INIT HPXPIXEL
i8: CMX_TARGET DESI_TARGET BGS_TARGET MWS_TARGET
i8: SV1_DESI_TARGET SV1_BGS_TARGET SV1_MWS_TARGET
i8: SV2_DESI_TARGET SV2_BGS_TARGET SV2_MWS_TARGET
i8: SV3_DESI_TARGET SV3_BGS_TARGET SV3_MWS_TARGET
i8: SCND_TARGET SV1_SCND_TARGET SV2_SCND_TARGET SV3_SCND_TARGET
"""


def _parse_datamodel(spec):
    fields = []
    for line in spec.strip().splitlines():
        kind, names = line.split(":")
        shape = ()
        if "[" in kind:
            kind, n = kind.rstrip("]").split("[")
            shape = (int(n),)
        fields.extend((name, kind, shape) for name in names.split())
    return np.dtype(fields)


#: The row of ``targetphot_onetile``'s output (122 columns, desispec's order).
TARGETPHOT_DTYPE = _parse_datamodel(_DATAMODEL)

_FAMILIES = ("TARG", "SCND", "TOO")
_CMX_80615 = ("target", "catalogs", "gaiadr2", "0.47.0", "targets", "cmx", "resolve", "supp")


def header_catalogs(header):
    """``[(keyword, value)]`` of the TARG/SCND/TOO families of a fiberassign header.

    For each family the base keyword, then ``X2``, ``X3``... up to ``X100``, stopping at
    the first missing keyword or at a value that is ``-`` after stripping (§3.3).
    """
    found = []
    for base in _FAMILIES:
        if base not in header:
            continue
        found.append((base, str(header[base])))
        for num in range(2, 101):
            key = f"{base}{num}"
            if key not in header or str(header[key]).strip() == "-":
                break
            found.append((key, str(header[key])))
    return found


def catalog_paths(header, paths, tileid, stats=None):
    """Existing targeting catalogs of a tile, de-duplicated and sorted (§4.5 steps 2-4).

    A named catalog that does not exist is skipped, as desispec's ``gather_targetphot``
    skips it (decision 11): a warning names the tile, the keyword and the path, and
    ``"KEYWORD=path"`` is appended to the list ``stats['missing_catalogs']`` (the run
    counts them).  Only when no named catalog exists does :class:`InputError` fail the
    tile, naming the fiberassign file and every keyword with its path.
    """
    log = get_logger()
    named = [(key, paths.rewrite_catalog_path(value, tileid))
             for key, value in header_catalogs(header)]
    if int(tileid) == 80615:
        named.append(("(tile 80615)", os.path.join(paths.desi_root, *_CMX_80615)))
    # present: an unreadable catalog (symlink loop, EACCES, EIO) is read, and fails
    kept = [path for _, path in named if present(path)]
    missing = [(key, path) for key, path in named if not present(path)]
    if not kept:
        which = "; ".join(f"{k} = {p}" for k, p in missing) or "no TARG/SCND/TOO keyword"
        raise InputError(f"tile {tileid}: no targeting catalog named in the header of "
                         f"{paths.fiberassign_file(tileid)} exists ({which})")
    for key, path in missing:
        log.warning(f"tile {tileid}: targeting catalog {key} = {path} named in the "
                    "fiberassign header does not exist; skipped, as desispec does")
        if stats is not None:
            stats.setdefault("missing_catalogs", []).append(f"{key}={path}")
    return sorted(set(kept))


def error_text(err):
    """One line from a (multi-line, repetitive) cfitsio/astropy error message."""
    lines = (line.strip() for line in str(err).splitlines())
    return "; ".join(dict.fromkeys(line for line in lines if line)) or type(err).__name__


#: TARGETID columns of the catalogs every tile of a program reads again (secondary
#: catalogs: millions of rows), per process: {path: ((mtime_ns, size), TARGETID)}.
_TARGETID_CACHE = {}
_CACHE_SIZE = 4

#: FILENSID of a primary-target directory's first healpix file, per process:
#: {path: ((mtime_ns, size), nside)} (read once, not once per tile).
_NSIDE_CACHE = {}


def _targetids(hdu, path, column, cache):
    st = os.stat(path)
    key = (st.st_mtime_ns, st.st_size)
    if cache and path in _TARGETID_CACHE and _TARGETID_CACHE[path][0] == key:
        return _TARGETID_CACHE[path][1]
    tid = hdu.read(columns=[column])[column]
    if cache:
        while len(_TARGETID_CACHE) >= _CACHE_SIZE:
            _TARGETID_CACHE.pop(next(iter(_TARGETID_CACHE)))
        _TARGETID_CACHE[path] = (key, tid)
    return tid


def _prefix(label):
    return f"{label}: " if label else ""


def catalog_kind(path):
    """``dir`` (primary targets in healpix files), ``ecsv`` (a ToO ledger) or ``fits``
    (a secondary catalog), as step 3 of the module docstring says."""
    if os.path.isdir(path):
        return "dir"
    base = os.path.basename(path)
    return "ecsv" if "ToO" in base or base.endswith(".ecsv") else "fits"


def read_catalog(path, kind, want, label=None):
    """Rows of catalog file ``path`` (a ``fits`` catalog or healpix file, or an ``ecsv``
    ledger) whose TARGETID is in ``want``, in file order, or None when there is none.
    Errors (:class:`InputError`) start with ``label`` (e.g. ``tile 1234``)."""
    if kind == "ecsv":
        return _ecsv_targets(path, want, label)
    return _fits_targets(path, want, label, cache=kind == "fits")


def _fits_targets(path, want, label, cache=False):
    """Rows of FITS catalog ``path`` whose TARGETID is in ``want`` (sorted), or None.

    ``cache``: keep the file's TARGETID column for the next tile (secondary catalogs).
    """
    import fitsio
    try:
        with fitsio.FITS(path) as fx:
            ext = next((i for i, h in enumerate(fx) if "TARGETS" in h.get_extname()), 1)
            hdu = fx[ext]
            names = {c.upper(): c for c in hdu.get_colnames()}
            if "TARGETID" not in names:
                raise InputError(f"{_prefix(label)}{path} HDU {ext} has no TARGETID column")
            tid = _targetids(hdu, path, names["TARGETID"], cache)
            hit = np.flatnonzero(np.isin(tid, want))
            if hit.size == 0:
                return None
            cols = [names[c] for c in TARGETPHOT_DTYPE.names if c in names]
            return hdu.read(columns=cols, rows=hit, upper=True)
    except InputError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise InputError(f"{_prefix(label)}cannot read targeting catalog {path}: "
                         f"{error_text(err)}") from None


def _ecsv_targets(path, want, label):
    """Rows of a ToO ledger whose TARGETID is in ``want``, as a dict of columns, or None.

    Read with :mod:`specprod_db.extract.ecsv` (equal to astropy's ``ascii.ecsv`` reader, masked
    values filled with 0 as ``numpy.ma.filled(column, 0)``), not astropy: its import and
    its reader cost seconds and left reference cycles of every row's strings."""
    from specprod_db.extract import ecsv
    try:
        tab = ecsv.read(path, columns=TARGETPHOT_DTYPE.names)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{_prefix(label)}cannot read ToO ledger {path}: "
                         f"{error_text(err)}") from None
    if "TARGETID" not in tab:
        raise InputError(f"{_prefix(label)}ToO ledger {path} has no TARGETID column")
    hit = np.flatnonzero(np.isin(tab["TARGETID"], want))
    if hit.size == 0:
        return None
    return {c: v[hit] for c, v in tab.items()}


def as_model(piece):
    """A piece of :func:`read_catalog` as a structured array of the targetphot columns it
    has, in :data:`TARGETPHOT_DTYPE`'s types (the cast ``_merge`` makes anyway), so
    it can be staged (HDF5) and merged later with the same result."""
    names = piece.dtype.names if hasattr(piece, "dtype") else list(piece)
    have = [n for n in TARGETPHOT_DTYPE.names if n in names]
    out = np.zeros(len(np.asarray(piece["TARGETID"])),
                   dtype=[(n, TARGETPHOT_DTYPE.fields[n][0]) for n in have])
    for name in have:
        out[name] = np.asarray(piece[name])
    return out


def _nside(path, label):
    try:
        st = os.stat(path)
    except OSError as err:  # a symlink loop, EACCES, EIO: bad input, not a bug
        raise InputError(f"{_prefix(label)}cannot read {path}: "
                         f"{err.strerror or type(err).__name__}") from None
    key = (st.st_mtime_ns, st.st_size)
    if path in _NSIDE_CACHE and _NSIDE_CACHE[path][0] == key:
        return _NSIDE_CACHE[path][1]
    import fitsio
    try:
        nside = int(fitsio.read_header(path, ext=1)["FILENSID"])
    except (OSError, ValueError, KeyError, IndexError) as err:
        raise InputError(f"{_prefix(label)}cannot read FILENSID from HDU1 of {path}: "
                         f"{error_text(err)}") from None
    if len(_NSIDE_CACHE) >= _CACHE_SIZE * 4:
        _NSIDE_CACHE.clear()
    _NSIDE_CACHE[path] = (key, nside)
    return nside


def _pixel_names(directory, prefix, nside, ra, dec):
    ok = np.isfinite(ra) & np.isfinite(dec)
    return sorted(os.path.join(directory, f"{prefix}hp-{pix}.fits")
                  for pix in np.unique(radec2pix(nside, ra[ok], dec[ok])))


def primary_directory(directory, ra, dec, tileid):
    """What a tile needs of a primary-target directory: ``nside`` (FILENSID of the first
    sorted ``*-hp-*.fits`` file), the files' ``prefix``, and the existing healpix
    ``files`` of the pixels of every target with finite RA/Dec (a superset of what
    :func:`assemble` reads: it reads those of the targets not found before); or
    ``error``, the message the tile fails with if :func:`assemble` reaches the
    directory (desispec fails only there)."""
    files = sorted(glob.glob(os.path.join(directory, "*-hp-*.fits")))
    if not files:
        return {"error": f"tile {tileid}: primary target directory {directory} "
                         "has no *-hp-*.fits file"}
    try:
        nside = _nside(files[0], f"tile {tileid}")
    except InputError as err:
        return {"error": str(err)}
    prefix = os.path.basename(files[0]).split("hp-")[0]
    names = _pixel_names(directory, prefix, nside, ra, dec)
    return {"nside": nside, "prefix": prefix,
            "files": [f for f in names if present(f)]}


def catalog_plan(tileid, header, targets, paths, stats):
    """The catalogs a tile reads, in order (steps 1-3 of the module docstring):
    ``[{"path", "kind", and for a directory what :func:`primary_directory` says}]``.
    Fails the tile (:class:`InputError`) when none of the named catalogs exists."""
    plan = []
    ra = np.asarray(targets["RA"], dtype=np.float64)
    dec = np.asarray(targets["DEC"], dtype=np.float64)
    for path in catalog_paths(header, paths, tileid, stats):
        entry = {"path": path, "kind": catalog_kind(path)}
        if entry["kind"] == "dir":
            entry.update(primary_directory(path, ra, dec, tileid))
        plan.append(entry)
    return plan


def plan_files(plan):
    """``[(file, kind)]``: every file a tile's plan may read."""
    out = []
    for entry in plan:
        if entry["kind"] == "dir":
            out.extend((f, "dir") for f in entry.get("files", ()))
        else:
            out.append((entry["path"], entry["kind"]))
    return out


def assemble(tileid, plan, targets, read, stats=None):
    """Targeting photometry of a tile from its :func:`catalog_plan` (steps 4-6):
    ``read(file, kind, want)`` gives the rows of ``file`` whose TARGETID is in ``want``
    (or None); files are taken in plan order, each only while targets remain unfound,
    and the first occurrence of a TARGETID wins."""
    stats = {} if stats is None else stats
    tid = np.asarray(targets["TARGETID"], dtype=np.int64)
    ra = np.asarray(targets["RA"], dtype=np.float64)
    dec = np.asarray(targets["DEC"], dtype=np.float64)
    out = np.zeros(len(tid), dtype=TARGETPHOT_DTYPE)
    out["TARGETID"] = tid
    if len(tid) == 0:
        return out
    found = np.zeros(len(tid), dtype=bool)
    for entry in plan:
        if found.all():
            break
        path, kind = entry["path"], entry["kind"]
        if kind == "dir":
            files = _primary_files(entry, ra[~found], dec[~found], tileid, stats)
        else:
            files = [path]
        for fname in files:
            want = np.unique(tid[~found])
            if want.size == 0:
                break
            piece = read(fname, kind, want)
            stats["files_read"] = stats.get("files_read", 0) + 1
            if piece is None:
                continue
            _lacking_bits(tileid, fname, kind, piece, _merge(out, found, tid, piece), stats)
    stats["not_found"] = stats.get("not_found", 0) + int(np.count_nonzero(~found))
    return out


#: The targeting-bit columns of the targetphot data model, by survey prefix (main ``""``).
_BIT_FAMILIES = {p: tuple(f"{p}{c}_TARGET" for c in ("DESI", "BGS", "MWS", "SCND"))
                 for p in ("", "SV1_", "SV2_", "SV3_")}
_BIT_FAMILIES["CMX_"] = ("CMX_TARGET",)


def lacking_bit_columns(names, kind: str) -> list:
    """The targeting-bit columns a catalog of ``kind`` with columns ``names`` should carry
    and lacks (datamodel.md §4.2-4.4): a primary-target file (``dir``) all four of its
    survey's (``DESI_TARGET, BGS_TARGET, MWS_TARGET, SCND_TARGET``, survey-prefixed for
    sv1-3; ``CMX_TARGET`` for cmx), a secondary catalog (``fits``) or ToO ledger
    (``ecsv``) ``DESI_TARGET`` and ``SCND_TARGET``.  Its survey is the one whose bit
    columns it has most of; a file without any lacks them all (``*_TARGET``)."""
    have = {str(n).upper() for n in names}
    held = {p: sum(c in have for c in cols) for p, cols in _BIT_FAMILIES.items()}
    prefix = max(held, key=held.get)
    if not held[prefix]:
        return ["*_TARGET"]
    cols = _BIT_FAMILIES[prefix]
    if kind != "dir" and prefix != "CMX_":
        cols = (f"{prefix}DESI_TARGET", f"{prefix}SCND_TARGET")
    return [c for c in cols if c not in have]


def _lacking_bits(tileid, fname, kind, piece, taken, stats):
    """Log and count the rows taken from a catalog that lacks targeting-bit columns."""
    names = piece.dtype.names if hasattr(piece, "dtype") else list(piece)
    lacking = lacking_bit_columns(names, kind)
    if not lacking or not taken:
        return
    get_logger().warning(f"tile {tileid}: targeting catalog {fname} has no column "
                         f"{', '.join(lacking)}: {taken} target row(s) from it loaded with "
                         "0 there, as desispec does")
    stats["missing_target_bits"] = stats.get("missing_target_bits", 0) + taken
    stats.setdefault("missing_bit_columns", []).append(f"{fname}: {', '.join(lacking)}")


def _primary_files(entry, ra, dec, tileid, stats):
    """The healpix files of a planned primary-target directory that hold these
    positions (those of the targets not found yet)."""
    if entry.get("error"):
        raise InputError(entry["error"])
    ok = np.isfinite(ra) & np.isfinite(dec)
    if not ok.all():
        get_logger().warning(f"tile {tileid}: {np.count_nonzero(~ok)} targets with "
                             f"non-finite RA/Dec are not looked up in {entry['path']}")
        stats["nan_radec"] = stats.get("nan_radec", 0) + int(np.count_nonzero(~ok))
    exist = set(entry["files"])
    return [f for f in _pixel_names(entry["path"], entry["prefix"], entry["nside"], ra, dec)
            if f in exist]


def targetphot_onetile(tileid, header, targets, paths, stats=None):
    """Targeting photometry of a tile's potential targets (see the module docstring),
    reading the catalogs itself.  The load reads them once per wave of tiles instead
    (:mod:`specprod_db.load.catalogs`), through the same :func:`catalog_plan` and
    :func:`assemble`.

    Parameters
    ----------
    tileid : int
    header : mapping
        PRIMARY header of the tile's fiberassign file (fitsio or astropy header, dict).
    targets : structured array
        TARGETID, RA, DEC of the tile's potential non-sky targets (TARGETS HDU).
    paths : :class:`specprod_db.paths.Paths`
    stats : dict, optional
        ``missing_catalogs`` (list of ``"KEYWORD=path"`` of named catalogs that do not
        exist), counts ``nan_radec``, ``not_found``, ``files_read``,
        ``missing_target_bits`` (rows from catalogs lacking targeting-bit columns, listed
        in ``missing_bit_columns`` as ``"file: COLUMNS"``).

    Returns
    -------
    structured array of :data:`TARGETPHOT_DTYPE`, one row per target, input order.
    """
    stats = {} if stats is None else stats
    if len(targets) == 0:
        return assemble(tileid, [], targets, None, stats)
    plan = catalog_plan(tileid, header, targets, paths, stats)
    return assemble(tileid, plan, targets,
                    lambda fname, kind, want: read_catalog(fname, kind, want,
                                                           f"tile {tileid}"), stats)


def _merge(out, found, tid, piece):
    """Copy ``piece`` rows into ``out`` rows not yet found; first occurrence wins.
    Returns the number of rows taken."""
    ptid = np.asarray(piece["TARGETID"], dtype=np.int64)
    utid, first = np.unique(ptid, return_index=True)   # stable: first occurrence
    pos = np.clip(np.searchsorted(utid, tid), 0, len(utid) - 1)
    take = ~found & (utid[pos] == tid)
    dst = np.flatnonzero(take)
    src = first[pos[take]]
    names = piece.dtype.names if hasattr(piece, "dtype") else list(piece)
    for name in names:
        if name in TARGETPHOT_DTYPE.names and name != "TARGETID":
            out[name][dst] = np.asarray(piece[name])[src]
    found[dst] = True
    return len(dst)


# --- database rows ------------------------------------------------------------------

_PHOTOMETRY = _table("photometry")
_TARGET = _table("target")
_DCHISQ = [c for c in _PHOTOMETRY.names if c.startswith("dchisq_")]


def target_rows(targetphot, tileid, survey, program, stats=None):
    """``target`` table rows, one per potential target (design decision 4)."""
    n = len(targetphot)
    have = set(targetphot.dtype.names)
    cols = {c: targetphot[c.upper()] for c in _TARGET.names if c.upper() in have}
    cols.update(id=ids.target_id(np.full(n, survey), tileid, targetphot["TARGETID"]),
                survey=survey, program=program, tileid=tileid)
    defaults = {c: 0 for c in _TARGET.names if c.endswith("_target")}
    return rows.build("target", cols, n=n, defaults=defaults, stats=stats)


def photometry_from_targetphot(targetphot, stats=None):
    """``photometry`` rows from targeting data (§9.2 "P" sources, §9.13).

    LS_ID is computed from RELEASE, BRICKID, BRICK_OBJID; PMRA and PMDEC are both set
    to 0.0 where either is NaN (``np.isnan``, as the old loader did; ±inf is left to
    finitize); DCHISQ is expanded into ``dchisq_psf`` ... ``dchisq_ser``; then
    finitize.  ``stats`` receives ``pm_zeroed`` and ``rows_finitized`` counts and
    :func:`rows.build`'s per-column ``finitized`` counts.
    """
    stats = {} if stats is None else stats
    tp = targetphot
    cols = {c: tp[c.upper()] for c in _PHOTOMETRY.names if c.upper() in tp.dtype.names}
    cols["ls_id"] = ids.ls_id(tp["RELEASE"], tp["BRICKID"], tp["BRICK_OBJID"])
    for i, c in enumerate(_DCHISQ):
        cols[c] = tp["DCHISQ"][:, i]
    pmra, pmdec = tp["PMRA"].copy(), tp["PMDEC"].copy()
    bad = np.isnan(pmra) | np.isnan(pmdec)
    pmra[bad] = 0.0
    pmdec[bad] = 0.0
    cols["pmra"], cols["pmdec"] = pmra, pmdec
    stats["pm_zeroed"] = stats.get("pm_zeroed", 0) + int(np.count_nonzero(bad))
    nonfinite = np.zeros(len(tp), dtype=bool)
    for c, v in cols.items():
        v = np.asarray(v)
        if v.dtype.kind == "f" and len(tp):  # (reshape cannot infer -1 for 0 rows)
            nonfinite |= ~np.isfinite(v).reshape(len(tp), -1).all(axis=1)
    stats["rows_finitized"] = stats.get("rows_finitized", 0) + int(nonfinite.sum())
    return rows.build("photometry", cols, n=len(tp), stats=stats)
