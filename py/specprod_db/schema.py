"""Every table of a production schema, declared once.

This module is the only place where table columns are listed.  The same declaration
drives:

* the DDL (:func:`specprod_db.db.ddl.create_schema`: ``CREATE TABLE``, keys, indexes,
  q3c indexes);
* the numpy dtypes of the HDF5 stage files (``Table.dtype``);
* the column order of the binary COPY (``Table.names``).

The layout is that of specprod-db 1.3 (the tables people already query: same names,
order, types, nullability, keys and indexes), with one intended difference: every
``program`` column is ``VARCHAR(8)`` instead of ``VARCHAR(6)``, so that the ``dark1b``
and ``bright1b`` programs of desispec >= 0.70 fit (see ``doc/decisions.md``).  The
bookkeeping tables ``load_run``, ``tile_state`` and ``tile_history`` are ours, and so are
the tile afterburner tables ``ztile_emline``, ``ztile_qso_mgii`` and ``ztile_qso_qn``
(additions to the 1.3 layout: :data:`AFTERBURNER_TABLES`, layout 2.3), and so are
``frame``'s unique index ``ix_frame_unique (expid, camera)`` and its indexes on ``expid``
and ``camera`` (layout 2.4: the indexes desihub/specprod-db's daily work added to its
Frame, d86b6c7, asked for by Data Lab's review, astro-datalab/notebooks-latest#264).

The name is ``schema`` in the sense of "the database layout"; the PostgreSQL namespace
(``daily``, ``loa`` ...) is always called *the schema name* in this package.
"""
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import numpy as np

#: PostgreSQL type -> numpy dtype used in stage files and for COPY.  ``numeric(39)``
#: composite ids are 128-bit unsigned integers, staged as two big-endian-ordered
#: uint64 words (high, low); ``timestamptz`` is staged as int64 microseconds since
#: 2000-01-01T00:00:00 UTC, the PostgreSQL epoch.
PG_TO_NUMPY: dict[str, np.dtype] = {
    "smallint": np.dtype("i2"),
    "integer": np.dtype("i4"),
    "serial": np.dtype("i4"),
    "bigint": np.dtype("i8"),
    "real": np.dtype("f4"),
    "double precision": np.dtype("f8"),
    "boolean": np.dtype("?"),
    "numeric(39)": np.dtype(("u8", (2,))),
    "timestamp with time zone": np.dtype("i8"),
}

#: Width used to stage ``varchar`` columns declared without a length.
UNBOUNDED_VARCHAR_WIDTH = 32

_ABBREVIATIONS = {"double": "double precision", "numeric39": "numeric(39)",
                  "timestamptz": "timestamp with time zone"}


@dataclass(frozen=True)
class Column:
    """One column: its name and PostgreSQL type (every data column is NOT NULL)."""
    name: str
    pgtype: str

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of this column in stage files and COPY buffers."""
        if self.pgtype.startswith("varchar"):
            width = self.pgtype[8:-1] if "(" in self.pgtype else UNBOUNDED_VARCHAR_WIDTH
            return np.dtype(f"S{int(width)}")
        if self.pgtype in ("text", "jsonb"):
            return np.dtype(object)
        return PG_TO_NUMPY[self.pgtype]

    @property
    def ddl_type(self) -> str:
        """The type in DDL (``character varying(N)`` for ``varcharN``)."""
        if self.pgtype.startswith("varchar"):
            return self.pgtype.replace("varchar", "character varying")
        return self.pgtype


@dataclass(frozen=True)
class Table:
    """A table: columns in order, keys and indexes.

    Parameters
    ----------
    name : str
        Table name (lower-case class name of the old ORM).
    spec : str
        One line per group of columns, ``TYPE: name name ...``, in column order.
    primary_key : tuple
        Primary-key columns.
    unique : tuple
        Columns of the composite unique index ``ix_{table}_unique``, if any.
    indexes : tuple
        Single-column indexes ``ix_{table}_{column}``.
    foreign_keys : dict
        column -> ``table.column`` referenced.
    q3c : tuple
        ``(ra, dec)`` columns of the q3c index ``ix_{table}_q3c_ang2ipix``, if any.
    unique_columns : tuple
        Single-column UNIQUE constraints (``{table}_{column}_key``).
    nullable : tuple
        Columns allowed to be NULL (bookkeeping tables only).
    bookkeeping : bool
        True for our own tables (not part of the specprod-db 1.3 layout).
    tile_input : str
        For the tables whose rows belong to one tile: the input they are made from
        (``tiles``, ``exposures``, ``fiberassign``, ``redrock``).  A tile's UPDATE that
        keeps its fiberassign file replaces every such table but the ``fiberassign``
        ones; which rows belong to a tile, and the order of deletes and inserts, follow
        from ``tileid`` columns and ``foreign_keys`` (:func:`tile_tables`).
    """
    name: str
    spec: str
    primary_key: tuple[str, ...]
    unique: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()
    foreign_keys: dict[str, str] = field(default_factory=dict)
    q3c: tuple[str, ...] = ()
    unique_columns: tuple[str, ...] = ()
    nullable: tuple[str, ...] = ()
    bookkeeping: bool = False
    tile_input: str | None = None

    @cached_property
    def columns(self) -> tuple[Column, ...]:
        """The columns, in table order, from ``spec``."""
        cols: list[Column] = []
        for line in self.spec.strip().splitlines():
            pgtype, names = line.split(":")
            pgtype = _ABBREVIATIONS.get(pgtype.strip(), pgtype.strip())
            cols.extend(Column(n, pgtype) for n in names.split())
        return tuple(cols)

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Column names in table (and COPY) order."""
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        """The column called ``name`` (KeyError when there is none)."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    @cached_property
    def dtype(self) -> np.dtype:
        """numpy structured dtype of one row, in column order."""
        return np.dtype([(c.name, c.dtype) for c in self.columns])

    def empty(self, n: int = 0) -> np.ndarray:
        """A zero-filled structured array of ``n`` rows."""
        return np.zeros(n, dtype=self.dtype)


_TSNR2 = "gpbdark elg gpbbright lya bgs gpbbackup qso lrg".split()
_TSNR2_BANDS = "\n".join(
    "real: " + " ".join(f"tsnr2_{t}_{b}" for t in _TSNR2) for b in "brz")
_TARGET_BITS = ("bigint: cmx_target desi_target bgs_target mws_target scnd_target\n"
                + "\n".join(f"bigint: sv{i}_desi_target sv{i}_bgs_target sv{i}_mws_target "
                            f"sv{i}_scnd_target" for i in (1, 2, 3)))
_COEFF = "double: chi2 " + " ".join(f"coeff_{k}" for k in range(10))
_PRIMARY = """smallint: sv_nspec
boolean: sv_primary
smallint: main_nspec
boolean: main_primary
smallint: zcat_nspec
boolean: zcat_primary"""

#: The subsets of desispec's primary-spectrum flags (``{prefix}_nspec``,
#: ``{prefix}_primary``): the SURVEY values of each (None: every row).  The SQL of
#: :mod:`specprod_db.load.finalize` and :func:`single_spectrum_flags` read it.
PRIMARY_SUBSETS: dict[str, Optional[tuple[str, ...]]] = {
    "zcat": None, "sv": ("sv1", "sv2", "sv3"), "main": ("main",)}


def single_spectrum_flags(survey: np.ndarray) -> dict[str, np.ndarray]:
    """The flags of rows each the only row of its TARGETID (``survey``: their SURVEY
    bytes): ``nspec`` 1 and ``primary`` true in the subsets a row is in, 0 and false in
    the others — what the flag computation gives such a row, so a redshift row is
    staged with them and a target seen once costs its flag UPDATE no write."""
    out: dict[str, np.ndarray] = {}
    for prefix, surveys in PRIMARY_SUBSETS.items():
        member = np.ones(len(survey), dtype=bool) if surveys is None else \
            np.isin(survey, [s.encode() for s in surveys])
        out[f"{prefix}_nspec"] = member.astype(np.int16)
        out[f"{prefix}_primary"] = member
    return out

PHOTOMETRY = Table("photometry", """
bigint: ls_id
smallint: release
integer: brickid
varchar(8): brickname
integer: brick_objid
varchar(4): morphtype
double: ra
real: ra_ivar
double: dec
real: dec_ivar dchisq_psf dchisq_rex dchisq_dev dchisq_exp dchisq_ser ebv
real: flux_g flux_r flux_z flux_ivar_g flux_ivar_r flux_ivar_z
real: mw_transmission_g mw_transmission_r mw_transmission_z
real: fracflux_g fracflux_r fracflux_z fracmasked_g fracmasked_r fracmasked_z
real: fracin_g fracin_r fracin_z
smallint: nobs_g nobs_r nobs_z
real: psfdepth_g psfdepth_r psfdepth_z galdepth_g galdepth_r galdepth_z
real: flux_w1 flux_w2 flux_w3 flux_w4 flux_ivar_w1 flux_ivar_w2 flux_ivar_w3 flux_ivar_w4
real: mw_transmission_w1 mw_transmission_w2 mw_transmission_w3 mw_transmission_w4
smallint: allmask_g allmask_r allmask_z
real: fiberflux_g fiberflux_r fiberflux_z fibertotflux_g fibertotflux_r fibertotflux_z
real: ref_epoch
smallint: wisemask_w1 wisemask_w2 maskbits
real: shape_r shape_e1 shape_e2 shape_r_ivar shape_e1_ivar shape_e2_ivar sersic sersic_ivar
bigint: ref_id
varchar(2): ref_cat
real: gaia_phot_g_mean_mag gaia_phot_g_mean_flux_over_error
real: gaia_phot_bp_mean_mag gaia_phot_bp_mean_flux_over_error
real: gaia_phot_rp_mean_mag gaia_phot_rp_mean_flux_over_error
real: gaia_phot_bp_rp_excess_factor
boolean: gaia_duplicated_source
real: gaia_astrometric_sigma5d_max
smallint: gaia_astrometric_params_solved
real: parallax parallax_ivar pmra pmra_ivar pmdec pmdec_ivar
bigint: targetid
""", primary_key=("targetid",), indexes=("ls_id",), q3c=("ra", "dec"))

TILE = Table("tile", """
integer: tileid
varchar(20): survey
varchar(8): program
varchar(20): faprgrm faflavor
bigint: nexp
double: exptime tilera tiledec efftime_etc efftime_spec efftime_gfa goaltime
varchar(20): obsstatus
double: lrg_efftime_dark elg_efftime_dark bgs_efftime_bright lya_efftime_dark
varchar(20): goaltype
double: mintfrac
integer: lastnight
""", primary_key=("tileid",), q3c=("tilera", "tiledec"), tile_input="tiles")

VERSION = Table("version", """
serial: id
varchar(20): package version
""", primary_key=("id",), unique_columns=("package",))

EXPOSURE = Table("exposure", """
integer: night expid tileid
double: tilera tiledec
timestamptz: date_obs
double: mjd
varchar(7): survey
varchar(8): program
varchar(16): faprgrm
varchar(19): faflavor
double: exptime efftime_spec goaltime
varchar(7): goaltype
double: mintfrac
real: airmass
double: ebv seeing_etc
real: efftime_etc tsnr2_elg tsnr2_qso tsnr2_lrg
double: tsnr2_lya
real: tsnr2_bgs tsnr2_gpbdark tsnr2_gpbbright tsnr2_gpbbackup
real: lrg_efftime_dark elg_efftime_dark bgs_efftime_bright
double: lya_efftime_dark
real: gpb_efftime_dark gpb_efftime_bright gpb_efftime_backup
double: transparency_gfa seeing_gfa fiber_fracflux_gfa fiber_fracflux_elg_gfa
double: fiber_fracflux_bgs_gfa fiberfac_gfa fiberfac_elg_gfa fiberfac_bgs_gfa
double: airmass_gfa sky_mag_ab_gfa sky_mag_g_spec sky_mag_r_spec sky_mag_z_spec
double: efftime_gfa efftime_dark_gfa efftime_bright_gfa efftime_backup_gfa
""", primary_key=("expid",), indexes=("night", "tileid"),
    foreign_keys={"tileid": "tile.tileid"}, q3c=("tilera", "tiledec"),
    tile_input="exposures")

FIBERASSIGN = Table("fiberassign", """
numeric39: id
integer: tileid
bigint: targetid
smallint: petal_loc
integer: device_loc location fiber fiberstatus
double: target_ra target_dec
real: pmra pmdec ref_epoch lambda_ref
bigint: fa_target
smallint: fa_type
real: fiberassign_x fiberassign_y
integer: priority
double: subpriority
real: parallax
""", primary_key=("id",), unique=("tileid", "targetid", "location"),
    indexes=("tileid", "targetid", "location"),
    foreign_keys={"tileid": "tile.tileid", "targetid": "photometry.targetid"},
    q3c=("target_ra", "target_dec"), tile_input="fiberassign")

POTENTIAL = Table("potential", """
numeric39: id
integer: tileid
bigint: targetid
integer: fiber location
""", primary_key=("id",), unique=("tileid", "targetid", "location"),
    indexes=("tileid", "targetid", "location"),
    foreign_keys={"tileid": "tile.tileid", "targetid": "photometry.targetid"},
    tile_input="fiberassign")

TARGET = Table("target", """
numeric39: id
bigint: targetid
varchar(1): photsys
double: subpriority
bigint: obsconditions priority_init numobs_init hpxpixel cmx_target
bigint: desi_target bgs_target mws_target
bigint: sv1_desi_target sv1_bgs_target sv1_mws_target
bigint: sv2_desi_target sv2_bgs_target sv2_mws_target
bigint: sv3_desi_target sv3_bgs_target sv3_mws_target
bigint: scnd_target sv1_scnd_target sv2_scnd_target sv3_scnd_target
varchar(7): survey
varchar(8): program
integer: tileid
""", primary_key=("id",), unique=("targetid", "survey", "tileid"),
    indexes=("targetid", "hpxpixel", "survey", "program", "tileid"),
    foreign_keys={"targetid": "photometry.targetid", "tileid": "tile.tileid"},
    tile_input="fiberassign")

ZPIX = Table("zpix", f"""
numeric39: id
bigint: targetid
varchar(22): desiname
varchar(7): survey
varchar(8): program
varchar(10): spgrp
integer: spgrpval healpix
double: z zerr
bigint: zwarn
{_COEFF}
bigint: npixels
varchar(6): spectype
varchar(20): subtype
bigint: ncoeff
double: deltachi2
integer: coadd_fiberstatus
{_TARGET_BITS}
smallint: coadd_numexp
real: coadd_exptime
smallint: coadd_numnight coadd_numtile
real: mean_delta_x rms_delta_x mean_delta_y rms_delta_y
double: mean_fiber_ra
real: std_fiber_ra
double: mean_fiber_dec
real: std_fiber_dec mean_psf_to_fiber_specflux
{_TSNR2_BANDS}
real: {" ".join("tsnr2_" + t for t in _TSNR2)}
{_PRIMARY}
double: min_mjd mean_mjd max_mjd
""", primary_key=("id",), unique=("targetid", "survey", "program"),
    indexes=("targetid", "desiname", "survey", "program", "spgrp", "spgrpval", "healpix",
             "z", "zwarn", "spectype", "subtype"),
    foreign_keys={"targetid": "photometry.targetid"})

FRAME = Table("frame", """
integer: frameid night expid tileid
double: mjd
real: exptime ebv
varchar(2): camera
real: tsnr2_gpbdark tsnr2_elg tsnr2_gpbbright
double: tsnr2_lya
real: tsnr2_bgs tsnr2_gpbbackup tsnr2_qso tsnr2_lrg
""", primary_key=("frameid",), unique=("expid", "camera"),
    indexes=("night", "tileid", "expid", "camera"),
    foreign_keys={"expid": "exposure.expid"}, tile_input="exposures")

ZTILE = Table("ztile", f"""
numeric39: id targetphotid
bigint: targetid
varchar(22): desiname
varchar(7): survey
varchar(8): program
varchar: spgrp
integer: spgrpval
double: z zerr
bigint: zwarn
{_COEFF}
bigint: npixels
varchar(6): spectype
varchar(20): subtype
bigint: ncoeff
double: deltachi2
integer: coadd_fiberstatus tileid
smallint: coadd_numexp
real: coadd_exptime
smallint: coadd_numnight coadd_numtile
real: mean_delta_x rms_delta_x mean_delta_y rms_delta_y
double: mean_fiber_ra
real: std_fiber_ra
double: mean_fiber_dec
real: std_fiber_dec mean_psf_to_fiber_specflux mean_fiber_x mean_fiber_y
{_TSNR2_BANDS}
real: {" ".join("tsnr2_" + t for t in _TSNR2)}
{_PRIMARY}
integer: firstnight lastnight
double: min_mjd mean_mjd max_mjd
""", primary_key=("id",), unique=("targetid", "spgrp", "spgrpval", "tileid"),
    indexes=("targetphotid", "targetid", "desiname", "survey", "program", "spgrp",
             "spgrpval", "tileid", "z", "zwarn", "spectype", "subtype"),
    foreign_keys={"targetphotid": "target.id", "targetid": "photometry.targetid",
                  "tileid": "tile.tileid"}, tile_input="redrock")

# --- tile afterburners (additions to the 1.3 layout) ---------------------------------
#
# The emline, qso_mgii and qso_qn files the daily production writes next to each petal's
# cumulative redrock file (in the DESI data model), row-matched to its REDSHIFTS: one row per
# ztile row, loaded with it.  ``id`` is that ztile row's id (primary key and foreign key
# to ztile, so a tile's DELETE or UPDATE removes them first).  Named ``ztile_*`` because
# they extend ztile rows (tile-based cumulative coadds), not zpix ones.  COEFF_NEW is
# ten ``coeff_new_{k}`` columns, as COEFF is ten ``coeff_{k}`` in ztile (schema columns
# are scalars).  SPECTYPE_NEW and SUBTYPE_NEW have the widths of ztile's spectype and
# subtype (the files have 3 characters; redrock's values reach 6).

ZTILE_EMLINE = Table("ztile_emline", """
numeric39: id
bigint: targetid
integer: tileid
real: oii_flux oii_flux_ivar
""", primary_key=("id",), indexes=("targetid", "tileid"),
    foreign_keys={"id": "ztile.id"}, tile_input="redrock")

ZTILE_QSO_MGII = Table("ztile_qso_mgii", """
numeric39: id
bigint: targetid
integer: tileid
boolean: is_qso_mgii
""", primary_key=("id",), indexes=("targetid", "tileid"),
    foreign_keys={"id": "ztile.id"}, tile_input="redrock")

ZTILE_QSO_QN = Table("ztile_qso_qn", f"""
numeric39: id
bigint: targetid
integer: tileid
boolean: is_qso_qn_new_rr
real: c_lya c_civ c_ciii c_mgii c_hbeta c_halpha
double: z_new
real: zerr_new
bigint: zwarn_new
varchar(6): spectype_new
varchar(20): subtype_new
real: chi2_new deltachi2_new
real: {" ".join(f"coeff_new_{k}" for k in range(10))}
""", primary_key=("id",), indexes=("targetid", "tileid"),
    foreign_keys={"id": "ztile.id"}, tile_input="redrock")

#: The tile afterburner tables (not in the specprod-db 1.3 layout; layout 2.3).
AFTERBURNER_TABLES = (ZTILE_EMLINE, ZTILE_QSO_MGII, ZTILE_QSO_QN)

# --- bookkeeping (ours) -------------------------------------------------------------

LOAD_RUN = Table("load_run", """
serial: id
timestamptz: started finished
integer: ranks
text: command options outcome counts
""", primary_key=("id",), nullable=("finished", "outcome", "counts"), bookkeeping=True)

TILE_STATE = Table("tile_state", """
integer: tileid
text: updated
integer: lastnight
text: status tile_hash exposures_hash redrock_fingerprint fiberassign_fingerprint line
integer: run_id
timestamptz: loaded_at
text: error
""", primary_key=("tileid",),
    nullable=("updated", "lastnight", "tile_hash", "exposures_hash", "redrock_fingerprint",
              "fiberassign_fingerprint", "line", "loaded_at", "error"),
    foreign_keys={"run_id": "load_run.id"}, bookkeeping=True)

#: One row per tile and run that did something to the tile (or refused to), written in
#: the tile's own transaction (:mod:`specprod_db.load.tile_writer`): ``action`` and ``reason`` are
#: the plan's; ``outcome`` is ``loaded``, ``refreshed``, ``deleted``, ``failed``,
#: ``internal_error`` or ``skipped``; ``error`` the failure's message; ``counts`` (JSON)
#: the rows written, deleted or re-flagged; ``tile_rows`` (JSON ``{table: rows}``) what
#: the tile holds after a load or delete (NULL when the action left its rows as they
#: were), which ``specprod-db verify`` compares with the tables.
TILE_HISTORY = Table("tile_history", """
serial: id
integer: run_id tileid
text: action reason outcome error
timestamptz: at
text: counts tile_rows
""", primary_key=("id",), nullable=("reason", "error", "counts", "tile_rows"),
    foreign_keys={"run_id": "load_run.id"}, bookkeeping=True)

#: Every table, in creation (foreign-key) order: the old tool's, ours, then the tile
#: afterburners.
TABLES = (PHOTOMETRY, TILE, VERSION, EXPOSURE, FIBERASSIGN, POTENTIAL, TARGET, ZPIX,
          FRAME, ZTILE, LOAD_RUN, TILE_STATE, TILE_HISTORY) + AFTERBURNER_TABLES
BY_NAME = {t.name: t for t in TABLES}

#: The production's data tables: the old tool's (the compatibility contract) and the
#: tile afterburners (:data:`AFTERBURNER_TABLES`).
DATA_TABLES = tuple(t for t in TABLES if not t.bookkeeping)


#: The one intended difference from the specprod-db 1.3 catalog (decision 5).
WIDENED_PROGRAM_COLUMNS = {(t.name, "program") for t in DATA_TABLES if "program" in t.names}


def tile_tables(full: bool = True) -> tuple[Table, ...]:
    """The tables holding a tile's rows, parents before children (the insert order; the
    delete order is its reverse).  Without ``full``: those an UPDATE that keeps the
    fiberassign file replaces (all but the ``fiberassign`` ones)."""
    owned = [t for t in TABLES if t.tile_input and (full or t.tile_input != "fiberassign")]
    names = {t.name for t in owned}
    ordered: list[Table] = []
    placed: set[str] = set()
    while len(ordered) < len(owned):
        ready = [t for t in owned if t.name not in placed and
                 ({ref.split(".")[0] for ref in t.foreign_keys.values()} & names)
                 - {t.name} <= placed]
        if not ready:
            raise ValueError("foreign keys between per-tile tables form a cycle")
        ordered.extend(ready)
        placed.update(t.name for t in ready)
    return tuple(ordered)


def referencing(name: str) -> list[tuple[Table, str]]:
    """``[(table, column)]`` of every foreign key that references table ``name``."""
    return [(t, col) for t in TABLES for col, ref in t.foreign_keys.items()
            if ref.split(".")[0] == name]


def table(name: str) -> Table:
    """The Table called ``name``."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no table {name!r}; known: {', '.join(BY_NAME)}") from None
