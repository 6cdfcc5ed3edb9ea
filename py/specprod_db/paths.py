"""Where the inputs are: DESI environment variables, command-line overrides, templates.

The one place for path templates (datamodel.md §8).  Locations are resolved as DESI's
own tools resolve them (``desispec.io.meta.findfile``), each overridable:

=====================  ==========================================================
``desi_root``          ``$DESI_ROOT`` (``$DESI_ROOT_READONLY`` when set and existing)
``redux``              ``$DESI_SPECTRO_REDUX``, else ``{desi_root}/spectro/redux``
``specprod``           ``$SPECPROD``, else ``daily``
``target``             ``$DESI_TARGET``, else ``{desi_root}/target``
``fiberassign``        ``$FIBER_ASSIGN_DIR``, else ``{target}/fiberassign/tiles/trunk``
``surveyops``          ``$DESI_SURVEYOPS``, else ``{desi_root}/survey/ops/surveyops/trunk``
``legacysurvey``       ``{desi_root}/external/legacysurvey/dr9`` (``--legacysurvey-dir``)
=====================  ==========================================================

The tiles file is ``tiles-{specprod}.csv``, else ``tiles-{specprod}.fits`` (a static
production such as ``fuji`` may have only the FITS file); the exposures file is
``exposures-{specprod}.fits``.  HEALPix coadd redshifts (static productions) are
``healpix/{survey}/{program}/{healpix//100}/{healpix}/redrock-{survey}-{program}-
{healpix}.fits`` (findfile ``redrock_hp``).
"""
import glob
import os
from dataclasses import dataclass, fields

from specprod_db.errors import InputError


def present(path: str) -> bool:
    """False only when ``path`` is not there (``stat`` says ENOENT: no such file, or a
    symlink to nothing); True when it is, readable or not.

    Unlike ``os.path.exists``, which is False for *any* error, an entry that is there
    but cannot be used — a symlink loop, a component that is a file, permission denied,
    an I/O error — counts as present, so that reading it fails the task that needs it,
    naming the file, instead of being taken for a missing (optional) file.
    """
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def checkgzip(path):
    """The present one (:func:`present`) of ``X`` and ``X.gz`` (or ``X`` without
    ``.gz``); else ``path``."""
    if present(path):
        return path
    alt = path[:-3] if path.endswith(".gz") else path + ".gz"
    return alt if present(alt) else path


@dataclass(frozen=True)
class Paths:
    desi_root: str
    redux: str
    specprod: str
    target: str
    fiberassign: str
    surveyops: str
    legacysurvey: str
    tiles_file: str = None
    exposures_file: str = None

    @classmethod
    def from_environment(cls, env=None, **overrides):
        """Resolve from ``env`` (default ``os.environ``); non-None ``overrides`` win."""
        env = os.environ if env is None else env
        ov = {k: v for k, v in overrides.items() if v is not None}
        root = ov.get("desi_root") or env.get("DESI_ROOT")
        ro = env.get("DESI_ROOT_READONLY")
        if ro and os.path.isdir(ro) and "desi_root" not in ov:
            root = ro
        if not root:
            needed = [k for k in ("redux", "target", "fiberassign", "surveyops",
                                  "legacysurvey") if k not in ov]
            envs = {"redux": "DESI_SPECTRO_REDUX", "target": "DESI_TARGET",
                    "fiberassign": "FIBER_ASSIGN_DIR", "surveyops": "DESI_SURVEYOPS"}
            missing = [k for k in needed if not env.get(envs.get(k, "-"))]
            if missing:
                raise InputError("DESI_ROOT is not set (nor --desi-root); it is needed to "
                                 f"locate: {', '.join(missing)}")
            root = ""
        target = ov.get("target") or env.get("DESI_TARGET") or os.path.join(root, "target")
        values = dict(
            desi_root=root,
            redux=ov.get("redux") or env.get("DESI_SPECTRO_REDUX")
            or os.path.join(root, "spectro", "redux"),
            specprod=ov.get("specprod") or env.get("SPECPROD") or "daily",
            target=target,
            fiberassign=ov.get("fiberassign") or env.get("FIBER_ASSIGN_DIR")
            or os.path.join(target, "fiberassign", "tiles", "trunk"),
            surveyops=ov.get("surveyops") or env.get("DESI_SURVEYOPS")
            or os.path.join(root, "survey", "ops", "surveyops", "trunk"),
            legacysurvey=ov.get("legacysurvey")
            or os.path.join(root, "external", "legacysurvey", "dr9"),
            tiles_file=ov.get("tiles_file"),
            exposures_file=ov.get("exposures_file"),
        )
        return cls(**values)

    def as_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # --- templates (findfile types) -------------------------------------------------

    @property
    def specprod_dir(self):
        return os.path.join(self.redux, self.specprod)

    def tiles(self):
        """The tiles file: ``--tiles-file``, else tiles-SPECPROD.csv, else .fits."""
        if self.tiles_file:
            return self.tiles_file
        csv = os.path.join(self.specprod_dir, f"tiles-{self.specprod}.csv")
        fits = os.path.join(self.specprod_dir, f"tiles-{self.specprod}.fits")
        return csv if os.path.exists(csv) or not os.path.exists(fits) else fits

    def exposures(self):
        return self.exposures_file or os.path.join(self.specprod_dir,
                                                   f"exposures-{self.specprod}.fits")

    def fiberassign_file(self, tileid):
        """findfile ``fiberassignsvn``: FIBER_ASSIGN_DIR/TTT/fiberassign-TTTTTT.fits[.gz]."""
        t = f"{int(tileid):06d}"
        return checkgzip(os.path.join(self.fiberassign, t[:3], f"fiberassign-{t}.fits.gz"))

    def cumulative_dir(self, tileid, night):
        return os.path.join(self.specprod_dir, "tiles", "cumulative", str(int(tileid)),
                            str(int(night)))

    def redrock_file(self, tileid, night, petal, prefix="redrock"):
        """findfile ``redrock_tile`` (cumulative); ``prefix`` 'zbest', 'emline', ..."""
        name = f"{prefix}-{int(petal)}-{int(tileid)}-thru{int(night)}.fits"
        return checkgzip(os.path.join(self.cumulative_dir(tileid, night), name))

    def healpix_dir(self, survey, program, healpix):
        """``{specprod_dir}/healpix/{survey}/{program}/{healpix//100}/{healpix}`` (findfile's
        ``hpixdir``, ``desispec.io.util.healpix_subdirectory``)."""
        healpix = int(healpix)
        return os.path.join(self.specprod_dir, "healpix", survey, program,
                            str(healpix // 100), str(healpix))

    def healpix_file(self, survey, program, healpix, prefix="redrock"):
        """findfile ``redrock_hp``: ``{hpixdir}/redrock-{survey}-{program}-{healpix}.fits``;
        ``prefix`` 'emline', 'qso_mgii', 'qso_qn' for its afterburners."""
        return checkgzip(os.path.join(self.healpix_dir(survey, program, healpix),
                                      f"{prefix}-{survey}-{program}-{int(healpix)}.fits"))

    def healpix_files(self):
        """``[(survey, program, healpix, path)]`` of every HEALPix redrock file of the
        production, sorted: what desispec's ``desi_zcatalog --group healpix`` globs
        (``healpix/SURVEY/PROGRAM/*/*/redrock*.fits``), kept where the name and the
        directories agree with :meth:`healpix_file`."""
        pattern = os.path.join(self.specprod_dir, "healpix", "*", "*", "*", "*",
                               "redrock-*-*-*.fits")
        out = []
        for path in glob.glob(pattern):
            rel = os.path.relpath(path, os.path.join(self.specprod_dir, "healpix"))
            survey, program, group, pixel, _ = rel.split(os.sep)
            if not pixel.isdigit() or group != str(int(pixel) // 100):
                continue
            if os.path.basename(path) != f"redrock-{survey}-{program}-{pixel}.fits":
                continue
            out.append((survey, program, int(pixel), path))
        return sorted(out)

    def tractor_file(self, region, brickname):
        """``{LS}/{north|south}/tractor/{BBB}/tractor-{BRICKNAME}.fits``."""
        return os.path.join(self.legacysurvey, region, "tractor", brickname[:3],
                            f"tractor-{brickname}.fits")

    def rewrite_catalog_path(self, value, tileid=None):
        """A fiberassign header TARG/SCND/TOO value as a path in this tree (§4.5 step 3)."""
        v = value.strip()
        for old in ("DESIROOT/target/catalogs/mtl/1.1.1/mtl/main/ToO/ToO.ecsv",
                    "DESIROOT/survey/ops/staging/mtl/main/ToO/ToO.ecsv"):
            if v == old:
                v = os.path.join(self.surveyops, "mtl", "main", "ToO", "ToO.ecsv")
        v = v.replace("dr9/0.58.0/targets/main/secondary/dark/maintargets-dark-secondary.fits",
                      "dr9/0.58.0/targets/main/secondary/dark/targets-dark-secondary.fits")
        if tileid is not None and 82401 <= int(tileid) <= 82409 and "gaiadr2" in v \
                and "backup" in v and "scratch" in v:
            v = os.path.join(self.target, "catalogs", "gaiadr2", "2.2.0", "targets", "main",
                             "resolve", "backup")
        if "secondary" in v:
            for obscon in ("bright", "dark"):
                if v.rstrip("/").endswith(f"sv1/secondary/{obscon}"):
                    v = os.path.join(v, f"sv1targets-{obscon}-secondary.fits")
        if v.startswith("DESIROOT"):
            v = self.desi_root + v[len("DESIROOT"):]
        if v.startswith("/data/target"):
            v = self.target + v[len("/data/target"):]
        if v.startswith("/data/afternoon_planning/surveyops/trunk"):
            v = self.surveyops + v[len("/data/afternoon_planning/surveyops/trunk"):]
        return os.path.normpath(v)


def add_path_arguments(parser):
    """Command-line overrides for every input location."""
    g = parser.add_argument_group("input locations (default: DESI environment variables)")
    g.add_argument("--desi-root", help="$DESI_ROOT")
    g.add_argument("--redux", help="$DESI_SPECTRO_REDUX")
    g.add_argument("--specprod", help="$SPECPROD (default daily)")
    g.add_argument("--target-dir", dest="target", help="$DESI_TARGET")
    g.add_argument("--fiberassign-dir", dest="fiberassign", help="$FIBER_ASSIGN_DIR")
    g.add_argument("--surveyops-dir", dest="surveyops", help="$DESI_SURVEYOPS")
    g.add_argument("--legacysurvey-dir", dest="legacysurvey",
                   help="Legacy Surveys root (default $DESI_ROOT/external/legacysurvey/dr9)")
    g.add_argument("--tiles-file", help="tiles file (default tiles-$SPECPROD.csv)")
    g.add_argument("--exposures-file", help="exposures file (default exposures-$SPECPROD.fits)")


def paths_from_args(args):
    return Paths.from_environment(
        desi_root=args.desi_root, redux=args.redux, specprod=args.specprod,
        target=args.target, fiberassign=args.fiberassign, surveyops=args.surveyops,
        legacysurvey=args.legacysurvey, tiles_file=args.tiles_file,
        exposures_file=args.exposures_file)
