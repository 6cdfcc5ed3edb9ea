"""Legacy Surveys photometry of the targets in one brick (``tractorphot_onebrick``;
``gather_onebrick`` + ``build_photometry`` for several bricks built together).

Our own equivalent of desispec's ``_gather_tractorphot_onebrick`` (datamodel.md §5.5),
following design decision 10: the targeting rows carry RELEASE, BRICKID, BRICK_OBJID
and PHOTSYS (from :func:`specprod_db.extract.targetphot.targetphot_onetile`), so

* **ID path** — rows with RELEASE > 0, BRICKID > 0, BRICK_OBJID > 0 and PHOTSYS 'S' or
  'N': the tractor file of region ``south`` ('S') or ``north`` ('N') must exist
  (:class:`InputError` otherwise); the tractor row with OBJID == BRICK_OBJID is taken,
  BRICK_PRIMARY not required.  Differences from desispec, all where desispec would
  crash: a brick with both 'S' and 'N' ID rows reads both files (desispec asserts one
  PHOTSYS per brick); a BRICK_OBJID absent from the file, or a tractor BRICKID different
  from the target's, leaves the row unmatched (counted in ``stats['id_unmatched']``,
  logged) instead of failing an assertion; a PHOTSYS other than 'S'/'N' (e.g. 'G') sends
  the row to the positional path (``stats['id_bad_photsys']``).
* **positional path** — every other row with finite RA/Dec: north file only -> north,
  south only -> south, both -> south if the median Dec of these rows is < 32.375
  (desitarget's ``desitarget_resolve_dec``), else north; neither -> unmatched.  Only
  BRICK_PRIMARY sources are candidates; each row takes its nearest candidate if the
  separation (Vincenty formula, as astropy's ``separation``) is strictly < 1.0 arcsec;
  several rows may take the same source.  Pure numpy: candidates sorted by Dec, each
  row compared only with the candidates in its +-1 arcsec Dec strip.

Each tractor file is opened once (read by :mod:`.fitstable`, else by fitsio); the
matching columns are read first, then only the matched rows and the columns the
``photometry`` table needs (names from the schema; the file's column-name case does not
matter: real DR9 files are lower case).  Photometry rows
follow §9.2 "T": LS_ID = (RELEASE << 40) | (BRICKID << 16) | OBJID, brick_objid from
OBJID, morphtype from TYPE, DCHISQ expanded into dchisq_psf ... dchisq_ser, then the
finitize rule (NaN -> -9999) of :func:`specprod_db.extract.rows.build`.  The PM zeroing of
targeting rows does not apply here.

The caller uses targeting photometry for the rows left unmatched (``matched_mask``).
"""
import os
import stat

import numpy as np

from specprod_db import ids
from specprod_db.errors import InputError
from specprod_db.extract import brickgrid, fitstable, rows
from specprod_db.extract.targetphot import error_text
from specprod_db.log import get_logger
from specprod_db.schema import table as _table

#: desitarget's north/south Dec boundary (``desitarget.io.desitarget_resolve_dec``).
RESOLVE_DEC = 32.375
#: desispec's ``radius_match`` default, arcsec (strict inequality).
RADIUS_ARCSEC = 1.0
REGIONS = {b"S": "south", b"N": "north"}

_PHOTOMETRY = _table("photometry")
_DCHISQ = [c for c in _PHOTOMETRY.names if c.startswith("dchisq_")]
_RENAMED = {"brick_objid": "OBJID", "morphtype": "TYPE"}


def _tractor_name(column):
    if column in _DCHISQ:
        return "DCHISQ"
    return _RENAMED.get(column, column.upper())


#: photometry columns copied from a tractor column: (photometry name, tractor name).
_COPIED = tuple((c, _tractor_name(c)) for c in _PHOTOMETRY.names
                if c not in _DCHISQ and c not in ("ls_id", "targetid"))

#: Tractor columns read for matched rows: those the photometry table takes.
TRACTOR_COLUMNS = tuple(dict.fromkeys(
    _tractor_name(c) for c in _PHOTOMETRY.names if c not in ("ls_id", "targetid")))


def bricknames(ra, dec):
    """Legacy Surveys brick names (``desiutil.brick.brickname``'s) as ``S8`` bytes, from
    :mod:`specprod_db.extract.brickgrid` (no table of every brick built).

    Non-finite positions (some SV1 targets, desispec issue 1711) get ``b''``: desiutil
    would fail on them.
    """
    ra, dec = np.broadcast_arrays(np.atleast_1d(np.asarray(ra, dtype=np.float64)),
                                  np.atleast_1d(np.asarray(dec, dtype=np.float64)))
    return brickgrid.brickname(ra, dec)


def brick_names(targets):
    """The brick of each row of ``targets`` (``S8``): its BRICKNAME when the array has a
    non-blank one (targeting rows: the brick of its BRICKID, as desispec groups them),
    else the brick containing its RA/Dec; ``b''`` for non-finite RA/Dec without one."""
    names = np.zeros(len(targets), dtype="S8")
    if "BRICKNAME" in (targets.dtype.names or ()):
        given = np.asarray(targets["BRICKNAME"])
        names[:] = np.char.strip(np.char.encode(given, "ascii") if given.dtype.kind == "U"
                                 else given)
    blank = np.flatnonzero(names == b"")
    names[blank] = bricknames(np.asarray(targets["RA"])[blank],
                              np.asarray(targets["DEC"])[blank])
    return names


def angular_separation(ra1, dec1, ra2, dec2):
    """Angle between two positions, degrees in and out (Vincenty, as astropy)."""
    lon1, lat1, lon2, lat2 = (np.radians(x) for x in (ra1, dec1, ra2, dec2))
    sdlon, cdlon = np.sin(lon2 - lon1), np.cos(lon2 - lon1)
    slat1, slat2, clat1, clat2 = np.sin(lat1), np.sin(lat2), np.cos(lat1), np.cos(lat2)
    num1 = clat2 * sdlon
    num2 = clat1 * slat2 - slat1 * clat2 * cdlon
    return np.degrees(np.arctan2(np.hypot(num1, num2), slat1 * slat2 + clat1 * clat2 * cdlon))


def nearest_within(ra, dec, cat_ra, cat_dec, radius_arcsec=RADIUS_ARCSEC):
    """Index into the catalog of each position's nearest source if closer than the
    radius (strictly), else -1.  Columnar: only sources in a +-radius Dec strip of each
    position are compared (the nearest source, if within the radius, is among them).
    """
    n = len(ra)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(cat_ra) == 0:
        return out
    radius = radius_arcsec / 3600.0
    order = np.argsort(cat_dec, kind="stable")
    sdec = np.asarray(cat_dec, dtype=np.float64)[order]
    pad = radius * 1.001
    lo = np.searchsorted(sdec, dec - pad, side="left")
    cnt = np.searchsorted(sdec, dec + pad, side="right") - lo
    total = int(cnt.sum())
    if total == 0:
        return out
    qi = np.repeat(np.arange(n), cnt)
    start = np.cumsum(cnt) - cnt
    ci = order[lo[qi] + np.arange(total) - start[qi]]
    sep = angular_separation(ra[qi], dec[qi], cat_ra[ci], cat_dec[ci])
    o = np.lexsort((sep, qi))
    qi, ci, sep = qi[o], ci[o], sep[o]
    first = np.r_[True, qi[1:] != qi[:-1]]
    ok = first & (sep < radius)
    out[qi[ok]] = ci[ok]
    return out


class _Tractor:
    """One tractor file, opened once for the brick: read by :class:`fitstable.BinTable`
    (the same arrays as fitsio, without its 7 ms of header description per file), or by
    fitsio when the table uses what BinTable leaves to it."""

    def __init__(self, path, brick):
        self.path, self.brick, self.fits = path, brick, None
        try:
            try:
                self.hdu = fitstable.BinTable(path)
                # shared by the files of one layout: not to be changed
                self.names = self.hdu.upper_names
            except fitstable.Unsupported:
                self.names = {c.upper(): c for c in self._fitsio().get_colnames()}
        except (OSError, ValueError, StopIteration) as err:
            raise self._unreadable(err) from None

    def _unreadable(self, err):
        text = error_text(err) if str(err) else "no table HDU"
        if text.startswith(f"{self.path}: "):  # fitstable's messages name the file too
            text = text[len(self.path) + 2:]
        return InputError(f"brick {self.brick}: cannot read tractor catalog {self.path}: "
                          f"{text}")

    def _fitsio(self):
        import fitsio
        self.fits = fitsio.FITS(self.path)
        self.hdu = next(h for h in self.fits if h.get_exttype() != "IMAGE_HDU")
        return self.hdu

    def read(self, columns, rows=None):
        try:
            names = _file_names(self.names, columns)
            if self.fits is None:
                try:
                    return self.hdu.read(names, rows=rows)
                except fitstable.Unsupported:  # a column left to fitsio
                    self._fitsio()
            return self.hdu.read(columns=names, rows=rows, upper=True)
        except (OSError, ValueError, KeyError, IndexError, StopIteration) as err:
            raise self._unreadable(err) from None

    def close(self):
        if self.fits is not None:
            self.fits.close()


#: :func:`_file_names` of a name map (by identity, kept alive here) and columns.
_NAMES: dict = {}
_MAX_NAMES = 256


def _file_names(names, columns):
    """The file's names (``names``: upper case -> the file's) of the upper-case
    ``columns``; ``ValueError`` naming the missing ones.  Remembered for the maps
    BinTable shares between the files of one layout (a brick's reads ask the same)."""
    key = (id(names), tuple(columns))
    got = _NAMES.get(key)
    if got is None or got[0] is not names:
        missing = [c for c in columns if c not in names]
        got = (names, missing, [names[c] for c in columns] if not missing else None)
        if len(_NAMES) >= _MAX_NAMES:
            _NAMES.clear()
        _NAMES[key] = got
    if got[1]:
        raise ValueError(f"missing column(s) {', '.join(got[1])}")
    return list(got[2])


def tractorphot_onebrick(brickname, targets, paths, stats=None):
    """Tractor photometry of ``targets`` (all in brick ``brickname``): the rows of
    :func:`gather_onebrick`'s columns (:func:`build_photometry`), and its mask.
    """
    stats = {} if stats is None else stats
    cols, matched = gather_onebrick(brickname, targets, paths, stats)
    return build_photometry([cols] if cols is not None else [], stats), matched


def build_photometry(pieces, stats=None):
    """``photometry`` rows of the column sets of one or more bricks
    (:func:`gather_onebrick`), in order; one :func:`rows.build` for all of them (a brick
    task's bricks built together: per brick it took a third of the brick stage), or
    None when their columns' types differ (the caller then builds them one by one)."""
    if not pieces:
        return _PHOTOMETRY.empty(0)
    first = pieces[0]
    if len(pieces) > 1:
        if any(p[k].dtype != first[k].dtype for p in pieces[1:] for k in first):
            return None
        first = {k: np.concatenate([p[k] for p in pieces]) for k in first}
    return rows.build("photometry", first, n=len(first["targetid"]), stats=stats)


def gather_onebrick(brickname, targets, paths, stats=None):
    """The Legacy Surveys columns of ``targets`` (all in brick ``brickname``), before
    :func:`build_photometry`.

    Parameters
    ----------
    brickname : str
    targets : structured array
        TARGETID, RA, DEC (the fiberassign TARGETS positions, which desispec's callers
        pass as TARGET_RA/TARGET_DEC) and the targeting RELEASE, BRICKID, BRICK_OBJID,
        PHOTSYS.
    paths : :class:`specprod_db.paths.Paths` (``legacysurvey`` root)
    stats : dict, optional
        Counts ``id_matched``, ``pos_matched``, ``id_unmatched``, ``id_bad_photsys``,
        plus :func:`rows.build`'s ``finitized``.

    Returns
    -------
    (columns, matched_mask)
        The ``photometry`` columns of the matched targets (name -> array), in input
        order (``columns['targetid'] == targets['TARGETID'][matched_mask]``), None when
        none matched; and the boolean mask of matched targets.
    """
    stats = {} if stats is None else stats
    n = len(targets)
    ra = np.asarray(targets["RA"], dtype=np.float64)
    dec = np.asarray(targets["DEC"], dtype=np.float64)
    photsys = np.char.strip(np.asarray(targets["PHOTSYS"]).astype("S1"))
    idrows = ((np.asarray(targets["RELEASE"]) > 0) & (np.asarray(targets["BRICKID"]) > 0)
              & (np.asarray(targets["BRICK_OBJID"]) > 0) & (photsys != b""))
    known = np.zeros(n, dtype=bool)
    for code in REGIONS:  # np.isin's sort, for two codes, cost more
        known |= photsys == code
    bad = idrows & ~known
    if bad.any():
        stats["id_bad_photsys"] = stats.get("id_bad_photsys", 0) + int(bad.sum())
        idrows &= ~bad
    src_file = np.full(n, -1, dtype=np.int64)     # index into ``files``
    src_row = np.full(n, -1, dtype=np.int64)
    files = []
    try:
        for code, region in REGIONS.items():
            sel = np.flatnonzero(idrows & (photsys == code))
            if sel.size == 0:
                continue
            path = paths.tractor_file(region, brickname)
            if not _tractor_exists(path, brickname):
                raise InputError(f"brick {brickname}: tractor catalog {path} does not exist "
                                 f"(needed by {sel.size} targets with PHOTSYS "
                                 f"{code.decode()})")
            files.append(_Tractor(path, brickname))
            _match_ids(files[-1], targets, sel, len(files) - 1, src_file, src_row)
            lost = sel[src_file[sel] < 0]
            if lost.size:
                stats["id_unmatched"] = stats.get("id_unmatched", 0) + lost.size
                get_logger().warning(
                    f"brick {brickname}: {lost.size} targets have no tractor row with "
                    f"their BRICKID/BRICK_OBJID in {path}, e.g. TARGETID "
                    f"{int(targets['TARGETID'][lost[0]])}")
        stats["id_matched"] = stats.get("id_matched", 0) + int((src_file >= 0).sum())

        pos = np.flatnonzero(~idrows & np.isfinite(ra) & np.isfinite(dec))
        path = _positional_file(paths, brickname, dec[pos]) if pos.size else None
        if path is not None:
            known = [f.path for f in files]
            k = known.index(path) if path in known else len(files)
            if k == len(files):
                files.append(_Tractor(path, brickname))
            cat = files[k].read(["RA", "DEC", "BRICK_PRIMARY"])
            primary = np.flatnonzero(cat["BRICK_PRIMARY"])
            if primary.size == 0:
                get_logger().warning(f"brick {brickname}: no BRICK_PRIMARY source in {path}")
            hit = nearest_within(ra[pos], dec[pos], cat["RA"][primary].astype(np.float64),
                                 cat["DEC"][primary].astype(np.float64))
            got = pos[hit >= 0]
            src_file[got], src_row[got] = k, primary[hit[hit >= 0]]
            stats["pos_matched"] = stats.get("pos_matched", 0) + int(got.size)
        matched = src_file >= 0
        return _photometry_columns(files, targets, src_file, src_row, matched), matched
    finally:
        for f in files:
            f.close()


def _match_ids(tractor, targets, sel, k, src_file, src_row):
    """ID path: tractor rows whose OBJID (and BRICKID) equal the targets' ones."""
    cat = tractor.read(["OBJID", "BRICKID"])
    order = np.argsort(cat["OBJID"], kind="stable")
    objid = cat["OBJID"][order]
    if len(objid) == 0:
        return
    want = np.asarray(targets["BRICK_OBJID"])[sel]
    at = np.clip(np.searchsorted(objid, want), 0, len(objid) - 1)
    row = order[at]
    ok = (objid[at] == want) & (cat["BRICKID"][row] == np.asarray(targets["BRICKID"])[sel])
    src_file[sel[ok]], src_row[sel[ok]] = k, row[ok]


def _tractor_exists(path, brickname):
    """True for a regular file, False when nothing is there (ENOENT); any other state
    (a directory or other non-file in its place, a symlink loop, EACCES, EIO) is
    :class:`InputError` naming brick and path: never taken for an absent file, which
    would leave the brick's targets silently unmatched."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise InputError(f"brick {brickname}: cannot read tractor catalog {path}: "
                         f"{err.strerror or type(err).__name__}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"brick {brickname}: cannot read tractor catalog {path}: "
                         f"{'is a directory' if stat.S_ISDIR(st.st_mode) else 'not a file'}")
    return True


def _positional_file(paths, brickname, dec):
    """North/south choice of the positional path (§5.5); None if neither file exists."""
    north = paths.tractor_file("north", brickname)
    south = paths.tractor_file("south", brickname)
    has_n, has_s = _tractor_exists(north, brickname), _tractor_exists(south, brickname)
    if has_n and has_s:
        return south if np.median(dec) < RESOLVE_DEC else north
    return north if has_n else south if has_s else None


def _photometry_columns(files, targets, src_file, src_row, matched):
    """``photometry`` columns of the matched targets (None if none), reading each file's
    rows once."""
    m = np.flatnonzero(matched)
    pieces = []  # (positions among the matched, their tractor rows)
    for k, tractor in enumerate(files):
        mine = np.flatnonzero(src_file[m] == k)
        if mine.size == 0:
            continue
        want = src_row[m[mine]]
        wanted = np.unique(want)
        piece = tractor.read(list(TRACTOR_COLUMNS), rows=wanted)
        if wanted.size != want.size or (wanted != want).any():  # else in order already
            piece = piece[np.searchsorted(wanted, want)]
        pieces.append((mine, piece))
    if not pieces:
        return None
    if len(pieces) == 1:  # every matched target from one file, in order
        data = pieces[0][1]
    elif all(p.dtype == pieces[0][1].dtype for _, p in pieces):
        data = np.zeros(m.size, dtype=pieces[0][1].dtype)
        for mine, p in pieces:
            data[mine] = p
    else:  # column types differ between the files: the first file's types
        data = {}
        for mine, p in pieces:
            for name in TRACTOR_COLUMNS:
                col = p[name]
                if name not in data:
                    data[name] = np.zeros((m.size,) + col.shape[1:], dtype=col.dtype)
                data[name][mine] = col
    cols = {c: data[t] for c, t in _COPIED}
    dchisq = data["DCHISQ"]
    for i, c in enumerate(_DCHISQ):
        cols[c] = dchisq[:, i]
    cols["ls_id"] = ids.ls_id(data["RELEASE"], data["BRICKID"], data["OBJID"])
    cols["targetid"] = np.asarray(targets["TARGETID"])[m]
    return cols
