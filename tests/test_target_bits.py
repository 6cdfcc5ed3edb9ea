"""A targeting catalog lacking a targeting-bit column (``*_TARGET``): loaded as desispec's
``gather_targetphot`` loads it (0: its data model's zeros), but logged (tile, file,
columns) and counted (``warnings.missing_target_bits`` of load_run.counts: the target
rows taken from such a file).

Which columns a catalog should carry (datamodel.md §4.2-4.4): a primary-target file all
four of its survey's (``DESI_TARGET BGS_TARGET MWS_TARGET SCND_TARGET``, ``SV1_``...
prefixed for sv1-3, ``CMX_TARGET`` for cmx), a secondary catalog or ToO ledger
``DESI_TARGET`` and ``SCND_TARGET``.
"""
import glob
import json
import os
import secrets

import fitsio
import numpy as np
import pytest
from numpy.lib import recfunctions

from conftest import CLI, copy_mock, init, mock_env, query, run_mpi
from test_targetphot import TILEID, _desispec, assert_same_as_desispec, tile  # noqa: F401

from specprod_db.extract import targetphot as tp
from specprod_db.paths import Paths


@pytest.mark.parametrize("names, kind, lacking", [
    (["DESI_TARGET", "BGS_TARGET", "MWS_TARGET", "SCND_TARGET"], "dir", []),
    (["BGS_TARGET", "MWS_TARGET", "SCND_TARGET"], "dir", ["DESI_TARGET"]),
    (["SV3_DESI_TARGET", "SV3_MWS_TARGET", "SV3_SCND_TARGET"], "dir", ["SV3_BGS_TARGET"]),
    (["SV1_DESI_TARGET", "SV1_BGS_TARGET", "SV1_MWS_TARGET", "SV1_SCND_TARGET",
      "DESI_TARGET"], "dir", []),                       # the survey it has most of
    (["CMX_TARGET"], "dir", []),
    (["DESI_TARGET", "SCND_TARGET"], "fits", []),        # a secondary catalog
    (["SV1_SCND_TARGET"], "fits", ["SV1_DESI_TARGET"]),
    (["DESI_TARGET"], "ecsv", ["SCND_TARGET"]),          # a ToO ledger
    (["TARGETID", "RA"], "fits", ["*_TARGET"]),
])
def test_which_columns_a_catalog_lacks(names, kind, lacking):
    assert tp.lacking_bit_columns(["TARGETID"] + names, kind) == lacking


def _drop_column(path, column):
    """Rewrite a FITS target file without ``column`` in HDU 1 (header kept)."""
    with fitsio.FITS(path) as fx:
        hdr, data = fx[1].read_header(), fx[1].read()
        extname = fx[1].get_extname()
    data = recfunctions.drop_fields(data, column, usemask=False)
    os.remove(path)
    with fitsio.FITS(path, "rw") as fx:
        fx.write(data, extname=extname,
                 header=[{"name": k, "value": hdr[k]} for k in ("FILENSID", "FILENEST",
                                                                 "OBSCON") if k in hdr])


def test_rows_of_a_file_without_a_bit_column_are_0_as_desispec_counted_and_logged(
        tile, caplog):  # noqa: F811
    paths, header, targets = tile
    pdir = os.path.join(paths.target, "catalogs", "dr9", "1.1.1", "targets", "main",
                        "resolve", "dark")
    first = sorted(glob.glob(os.path.join(pdir, "*-hp-*.fits")))[0]
    _drop_column(first, "BGS_TARGET")
    stats = {}
    ours = tp.targetphot_onetile(TILEID, header, targets, paths, stats)
    assert_same_as_desispec(ours, _desispec(targets))        # 0, as gather_targetphot
    from_first = np.isin(targets["TARGETID"], fitsio.read(first, columns=["TARGETID"])[
        "TARGETID"]) & (ours["PHOTSYS"] == b"S")
    assert from_first.sum() > 0 and (ours["BGS_TARGET"][from_first] == 0).all()
    # the fixture's ToO ledger has no SCND_TARGET: its 2 rows count too
    assert stats["missing_target_bits"] == from_first.sum() + 2
    assert sorted(stats["missing_bit_columns"]) == sorted(
        [f"{first}: BGS_TARGET", f"{paths.surveyops}/mtl/main/ToO/ToO.ecsv: SCND_TARGET"])
    text = caplog.text
    assert f"tile {TILEID}: targeting catalog {first} has no column BGS_TARGET: " \
           f"{from_first.sum()} target row(s) from it loaded with 0" in text


def test_a_load_counts_them(pg_dsn, small_production, mpiexec, tmp_path):
    """Through a real load (1 rank): one main dark primary file without DESI_TARGET;
    the load succeeds, its rows have desi_target 0, the run counts them in
    warnings.missing_target_bits and the log names tile, file and column."""
    prod = copy_mock(small_production[0], tmp_path / "production")
    paths = Paths.from_environment(mock_env(prod))
    files = sorted(glob.glob(os.path.join(paths.target, "catalogs", "dr9", "*", "targets",
                                          "main", "resolve", "dark", "*-hp-*.fits")))
    # the file holding most of the loaded main dark tiles' targets
    path = max(files, key=lambda f: len(fitsio.read(f, columns=["TARGETID"])))
    damaged = fitsio.read(path, columns=["TARGETID", "DESI_TARGET"])
    _drop_column(path, "DESI_TARGET")
    name = "test_" + secrets.token_hex(4)
    init(pg_dsn, name)
    try:
        r = run_mpi(mpiexec, 1, CLI + ["load", "--schema", name, "--stage-dir",
                                       str(tmp_path / "stage")],
                    env=mock_env(prod, SPECPROD_DB_DSN=pg_dsn))
        counts = query(pg_dsn, f'SELECT counts FROM "{name}".load_run ORDER BY id DESC '
                               "LIMIT 1")[0][0]
        counts = json.loads(counts) if isinstance(counts, str) else counts
        rows = query(pg_dsn, f'SELECT t.targetid, t.desi_target FROM "{name}".target t '
                             "JOIN unnest(%s::bigint[]) AS d(targetid) USING (targetid) "
                             "WHERE t.survey = 'main' AND t.program = 'dark'",
                     ([int(x) for x in damaged["TARGETID"]],))
    finally:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    assert rows and all(d == 0 for _, d in rows)
    before = dict(zip(damaged["TARGETID"].tolist(), damaged["DESI_TARGET"].tolist()))
    assert any(before[t] for t, _ in rows)          # they had bits set before
    assert counts["warnings"]["missing_target_bits"] >= len(rows), counts
    log = r.stdout + r.stderr
    assert f"targeting catalog {path} has no column DESI_TARGET" in log, log[-3000:]
    assert "missing_target_bits" in r.stdout        # the run's report
