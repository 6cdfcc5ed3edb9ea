"""A mock DESI daily production, written the way DESI writes the real one.

Python API (stable; the pipeline tests use it)::

    from specprod_db.mock import make_production, advance_production
    s = make_production(outdir, tiles=None, seed=1, small=False, fibers_per_tile=None,
                        nights=None, radius=None, append_duplicates=False)
    s = advance_production(outdir, new_tiles=2, reobserve=2, withdraw=False)

Both return a summary dict: ``outdir``, ``tiles`` (TILEIDs in tiles-daily), ``new_tiles``,
``changed_tiles``, ``withdrawn``, ``night`` (the night just processed) and ``special``
(special-case tiles by name: north_south, missing_petal, sv3, dark1b_bright1b, backup,
efftime_zero, toostaging, overlapping, duplicate_lines, empty_updated, withdrawn).

The tree under ``outdir`` (= ``$DESI_ROOT``; ``outdir/env.sh`` exports DESI_ROOT,
DESI_SPECTRO_REDUX, SPECPROD=daily, DESI_TARGET, FIBER_ASSIGN_DIR, DESI_SURVEYOPS) is
described in ``doc/mock.md``. ``outdir/mock-truth.json`` lists, per tile, the expected
photometry source of every potential target (``id``, ``position``, ``targeting``), the
sky targets and the NaN-proper-motion targets; ``outdir/mock-state.json`` is the state
``advance`` continues from. CLI: ``specprod-db mock OUTDIR [--advance] ...``.
"""
from specprod_db.mock.layout import Layout
from specprod_db.mock.production import advance_production, make_production

__all__ = ["advance_production", "environment", "make_production"]


def environment(outdir):
    """The DESI environment variables of the mock tree at ``outdir`` (what ``env.sh``
    exports): DESI_ROOT, DESI_SPECTRO_REDUX, SPECPROD, DESI_TARGET, FIBER_ASSIGN_DIR,
    DESI_SURVEYOPS."""
    return Layout(outdir).env()
