"""Where every file of a mock production lives (datamodel.md §8).

The tree under OUTDIR follows the DESI environment-variable conventions::

    OUTDIR/                                   = $DESI_ROOT
      env.sh                                  exports the variables below
      mock-state.json, mock-truth.json        mock bookkeeping (not DESI files)
      spectro/redux/daily/                    = $DESI_SPECTRO_REDUX/$SPECPROD
        healpix/SURVEY/PROGRAM/PIX//100/PIX/  a static production (--static NAME) only
      target/                                 = $DESI_TARGET
        fiberassign/tiles/trunk/TTT/          = $FIBER_ASSIGN_DIR
        catalogs/{dr9,gaiadr2}/VER/targets/...
      survey/ops/surveyops/trunk/             = $DESI_SURVEYOPS
      external/legacysurvey/dr9/{north,south}/tractor/BBB/
"""
import json
import os

SPECPROD = "daily"

#: Target catalogue directories relative to DESI_ROOT, per (survey, obscon).
#: dark1b/bright1b tiles use the dark/bright catalogues of the same survey.
TARGET_DIRS = {
    ("main", "dark"): "target/catalogs/dr9/1.1.1/targets/main/resolve/dark",
    ("main", "bright"): "target/catalogs/dr9/1.1.1/targets/main/resolve/bright",
    ("main", "backup"): "target/catalogs/gaiadr2/2.2.0/targets/main/resolve/backup",
    ("sv3", "dark"): "target/catalogs/dr9/0.57.0/targets/sv3/resolve/dark",
    ("sv3", "bright"): "target/catalogs/dr9/0.57.0/targets/sv3/resolve/bright",
}
SECONDARY_FILES = {
    ("main", "dark"): "target/catalogs/dr9/1.1.1/targets/main/secondary/dark/targets-dark-secondary.fits",
    ("main", "bright"): "target/catalogs/dr9/1.1.1/targets/main/secondary/bright/targets-bright-secondary.fits",
    ("sv3", "dark"): "target/catalogs/dr9/0.57.0/targets/sv3/secondary/dark/sv3targets-dark-secondary.fits",
    ("sv3", "bright"): "target/catalogs/dr9/0.57.0/targets/sv3/secondary/bright/sv3targets-bright-secondary.fits",
}
TOO_FILES = {
    "main": "survey/ops/surveyops/trunk/mtl/main/ToO/ToO.ecsv",
    "sv3": "survey/ops/surveyops/trunk/mtl/sv3/ToO/ToO.ecsv",
}


def obscon(program):
    """Target catalogue obscon of a tile program (dark1b -> dark, bright1b -> bright)."""
    return program[:-2] if program.endswith("1b") else program


def target_prefix(survey, obscon_):
    return f"targets-{obscon_}" if survey == "main" else f"{survey}targets-{obscon_}"


class Layout:
    """Paths of one mock tree rooted at ``outdir``, of production ``specprod`` (default:
    the one its ``mock-state.json`` records, else ``daily``)."""

    def __init__(self, outdir, specprod=None):
        self.root = os.path.abspath(outdir)
        if specprod is None:
            try:
                with open(self.state_file) as f:
                    specprod = json.load(f).get("specprod")
            except (OSError, ValueError):
                specprod = None
        self.specprod = specprod or SPECPROD

    def env(self):
        r = self.root
        return {
            "DESI_ROOT": r,
            "DESI_SPECTRO_REDUX": os.path.join(r, "spectro", "redux"),
            "SPECPROD": self.specprod,
            "DESI_TARGET": os.path.join(r, "target"),
            "FIBER_ASSIGN_DIR": os.path.join(r, "target", "fiberassign", "tiles", "trunk"),
            "DESI_SURVEYOPS": os.path.join(r, "survey", "ops", "surveyops", "trunk"),
        }

    def path(self, rel):
        return os.path.join(self.root, rel)

    @property
    def specprod_dir(self):
        return os.path.join(self.root, "spectro", "redux", self.specprod)

    @property
    def legacysurvey_dir(self):
        return os.path.join(self.root, "external", "legacysurvey", "dr9")

    @property
    def state_file(self):
        return os.path.join(self.root, "mock-state.json")

    @property
    def truth_file(self):
        return os.path.join(self.root, "mock-truth.json")

    def tiles_csv(self):
        return os.path.join(self.specprod_dir, f"tiles-{self.specprod}.csv")

    def tiles_fits(self):
        return os.path.join(self.specprod_dir, f"tiles-{self.specprod}.fits")

    def exposures_fits(self):
        return os.path.join(self.specprod_dir, f"exposures-{self.specprod}.fits")

    def fiberassign(self, tileid):
        return os.path.join(self.env()["FIBER_ASSIGN_DIR"], f"{tileid // 1000:03d}",
                            f"fiberassign-{tileid:06d}.fits.gz")

    def cumulative_dir(self, tileid, lastnight):
        return os.path.join(self.specprod_dir, "tiles", "cumulative", str(tileid), str(lastnight))

    def tile_file(self, prefix, petal, tileid, lastnight):
        return os.path.join(self.cumulative_dir(tileid, lastnight),
                            f"{prefix}-{petal}-{tileid}-thru{lastnight}.fits")

    def healpix_file(self, prefix, survey, program, healpix):
        """findfile ``redrock_hp`` (and ``emline_hp`` ...): ``healpix/SURVEY/PROGRAM/
        PIX//100/PIX/PREFIX-SURVEY-PROGRAM-PIX.fits``."""
        return os.path.join(self.specprod_dir, "healpix", survey, program,
                            str(healpix // 100), str(healpix),
                            f"{prefix}-{survey}-{program}-{healpix}.fits")

    def tractor(self, region, brickname):
        return os.path.join(self.legacysurvey_dir, region, "tractor", brickname[:3],
                            f"tractor-{brickname}.fits")

    def target_file(self, survey, obscon_, pix):
        d = self.path(TARGET_DIRS[(survey, obscon_)])
        prefix = "targets-backup" if obscon_ == "backup" else target_prefix(survey, obscon_)
        return os.path.join(d, f"{prefix}-hp-{pix}.fits")

    def write_env(self):
        """Write OUTDIR/env.sh exporting the DESI variables of this tree."""
        lines = ["# Source this file to point DESI tools at this mock production.\n"]
        for k, v in self.env().items():
            lines.append(f"export {k}={v}\n")
        with open(os.path.join(self.root, "env.sh"), "w") as f:
            f.writelines(lines)


def makedirs_for(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
