"""Primary-spectrum flags in SQL versus desispec's ``find_primary_spectra``.

Random ztile rows with repeated TARGETIDs across tiles and surveys, ZWARN != 0, zero,
negative, -9999 and NaN sort values and exact ties, loaded into a real ``ztile`` table;
the SQL flags must equal desispec's where desispec's answer is determined, and pick the
smallest (tileid, id) among exactly tied candidates (design decision 7).
"""
import numpy as np
import psycopg2
import pytest
from astropy.table import Table
from desispec.zcatalog import find_primary_spectra
from psycopg2.extras import execute_values

from specprod_db import ids, schema

from specprod_db.db import ddl
from specprod_db.load import finalize

SURVEYS = np.array(["main", "sv1", "sv2", "sv3", "cmx", "special"])


def _rows(seed, n=3000):
    rng = np.random.default_rng(seed)
    out = schema.ZTILE.empty(n)
    out["targetid"] = rng.integers(1, n // 3, n) * 1000 + 7
    out["tileid"] = rng.integers(1, 40, n)
    out["survey"] = rng.choice(SURVEYS, n).astype("S7")
    out["program"] = b"dark"
    out["spgrp"] = b"cumulative"
    out["spgrpval"] = 20240101 + rng.integers(0, 5, n)
    out["zwarn"] = np.where(rng.random(n) < 0.3, rng.choice([4, 1024, 5], n), 0)
    sort = rng.choice([0.0, -9999.0, -3.5, 12.5, 100.0, 7.25, np.nan], n)
    continuous = rng.random(n) < 0.5
    sort[continuous] = rng.uniform(-10, 500, continuous.sum()).astype(np.float32)
    out["tsnr2_lrg"] = sort
    out["desiname"] = b"DESI J000.0000+00.0000"
    # unique (targetid, spgrp, spgrpval, tileid): drop duplicates of that key
    _, first = np.unique(out[["targetid", "spgrpval", "tileid"]], return_index=True)
    out = out[np.sort(first)]
    out["id"] = ids.ztile_id("cumulative", out["spgrpval"], out["tileid"], out["targetid"])
    out["targetphotid"] = ids.target_id(
        np.where(np.isin(out["survey"], SURVEYS.astype("S")), out["survey"], b"main"),
        out["tileid"], out["targetid"])
    return out


@pytest.fixture
def conn(pg_dsn, schema_name):
    """A connection closed before ``schema_name`` is dropped (it may hold locks)."""
    c = psycopg2.connect(pg_dsn)
    yield c
    c.close()


def _create_with_defaults(conn, schema_name, data):
    """ztile rows with every non-key column zero/false, then the test columns set."""
    with conn.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema_name}"')
        cur.execute(ddl.create_table_sql(schema.Table(
            "ztile", schema.ZTILE.spec, primary_key=("id",),
            unique=schema.ZTILE.unique), schema_name))
        names = schema.ZTILE.names
        values = []
        for r in data:
            row = []
            for c in names:
                v = r[c]
                if c in ("id", "targetphotid"):
                    v = ids.to_int(v)[0]
                elif isinstance(v, bytes):
                    v = v.decode()
                elif isinstance(v, np.bool_):
                    v = bool(v)
                elif isinstance(v, np.floating):
                    v = float(v)
                elif isinstance(v, np.integer):
                    v = int(v)
                row.append(v)
            values.append(tuple(row))
        execute_values(cur, f'INSERT INTO "{schema_name}".ztile ({", ".join(names)}) '
                            "VALUES %s", values, page_size=2000)
    conn.commit()


def _fetch(conn, schema_name):
    with conn.cursor() as cur:
        cur.execute(f'SELECT id::text, zcat_nspec, zcat_primary, sv_nspec, sv_primary, '
                    f'main_nspec, main_primary FROM "{schema_name}".ztile')
        got = {int(r[0]): r[1:] for r in cur.fetchall()}
    return got


def _expected(data, subset_targetids=None):
    """desispec flags per row id, plus the set of rows whose primary is undetermined."""
    n = len(data)
    exp = {k: (np.zeros(n, np.int64), np.zeros(n, bool)) for k in ("zcat", "sv", "main")}
    survey = data["survey"].astype(str)
    members = {"zcat": np.ones(n, bool), "sv": np.isin(survey, ["sv1", "sv2", "sv3"]),
               "main": survey == "main"}
    if subset_targetids is not None:
        inset = np.isin(data["targetid"], subset_targetids)
    else:
        inset = np.ones(n, bool)
    ambiguous = {k: set() for k in members}
    for k, m in members.items():
        m = m & inset
        if not m.any():
            continue
        sub = data[m]
        table = {"TARGETID": sub["targetid"], "ZWARN": sub["zwarn"],
                 "TSNR2_LRG": sub["tsnr2_lrg"]}
        nspec, primary = find_primary_spectra(Table(table), "TSNR2_LRG")
        exp[k][0][m] = nspec
        exp[k][1][m] = primary
        # candidates tied with the best one: same targetid, zwarn class and 1/S
        s = sub["tsnr2_lrg"].astype(np.float64)
        inv = 1 / (s + 1e-99 * (s == 0))
        key = np.rec.fromarrays([sub["targetid"], (sub["zwarn"] != 0).astype(int), inv])
        best = key[primary]
        for t, zc, iv in best:
            tied = (key.f0 == t) & (key.f1 == zc) & ((key.f2 == iv) |
                                                     (np.isnan(key.f2) & np.isnan(iv)))
            if tied.sum() > 1:
                rows_ = np.flatnonzero(m)[tied].tolist()
                rows_.sort(key=lambda i: (int(data["tileid"][i]), ids.to_int(data["id"][i])[0]))
                ambiguous[k].add(tuple(rows_))
    return exp, ambiguous


def _check(data, got, exp, ambiguous, inset=None):
    rid = [ids.to_int(x)[0] for x in data["id"]]
    cols = {"zcat": (0, 1), "sv": (2, 3), "main": (4, 5)}
    n_tied = 0
    for k, (ni, pi) in cols.items():
        nspec = np.array([got[r][ni] for r in rid])
        prim = np.array([got[r][pi] for r in rid])
        np.testing.assert_array_equal(nspec, exp[k][0], err_msg=f"{k}_nspec")
        tied_rows = set()
        for group in ambiguous[k]:
            tied_rows.update(group)
            # the winner is the first of (tileid, id) order, and desispec chose one of them
            assert prim[list(group)].tolist() == [True] + [False] * (len(group) - 1), k
            assert exp[k][1][list(group)].sum() == 1
            n_tied += 1
        other = np.array([i for i in range(len(data)) if i not in tied_rows], dtype=int)
        np.testing.assert_array_equal(prim[other], exp[k][1][other], err_msg=f"{k}_primary")
    return n_tied


@pytest.mark.parametrize("seed", [1, 2])
def test_all_rows_match_desispec(conn, schema_name, seed):
    data = _rows(seed)
    _create_with_defaults(conn, schema_name, data)
    changed = finalize.update_primary(conn, schema_name)
    conn.commit()
    got = _fetch(conn, schema_name)
    exp, ambiguous = _expected(data)
    n_tied = _check(data, got, exp, ambiguous)
    assert n_tied > 0, "the data must contain exact ties"
    assert changed == len(data)  # every row has zcat_nspec >= 1 now
    # idempotent: a second pass changes nothing
    assert finalize.update_primary(conn, schema_name) == 0


def test_subset_of_targetids(conn, schema_name):
    data = _rows(3)
    _create_with_defaults(conn, schema_name, data)
    uniq = np.unique(data["targetid"])
    subset = uniq[::3]
    finalize.update_primary(conn, schema_name, subset)
    conn.commit()
    got = _fetch(conn, schema_name)
    exp, ambiguous = _expected(data, subset)
    _check(data, got, exp, ambiguous)
    # rows outside the subset were not touched
    rid = [ids.to_int(x)[0] for x in data["id"]]
    outside = ~np.isin(data["targetid"], subset)
    assert all(got[r] == (0, False, 0, False, 0, False)
               for r, o in zip(rid, outside) if o)


def test_rows_leaving_a_subset_are_reset(conn, schema_name):
    """A row whose survey stops being sv gets sv_nspec 0 / sv_primary false again."""
    data = _rows(4, n=300)
    _create_with_defaults(conn, schema_name, data)
    finalize.update_primary(conn, schema_name)
    with conn.cursor() as cur:
        cur.execute(f'UPDATE "{schema_name}".ztile SET survey = \'cmx\'')
    finalize.update_primary(conn, schema_name, data["targetid"][:50])
    conn.commit()
    with conn.cursor() as cur:
        cur.execute(f'SELECT count(*) FROM "{schema_name}".ztile WHERE targetid = ANY(%s) '
                    'AND (sv_nspec <> 0 OR sv_primary OR main_nspec <> 0 OR main_primary)',
                    (data["targetid"][:50].tolist(),))
        assert cur.fetchone()[0] == 0


def test_empty_subset_and_analyze(conn, schema_name):
    data = _rows(5, n=30)
    _create_with_defaults(conn, schema_name, data)
    assert finalize.update_primary(conn, schema_name, []) == 0
    finalize.analyze(conn, schema_name, ["ztile"])
    conn.commit()


def test_all_rows_resets_single_spectra_whatever_they_held(conn, schema_name):
    """update_primary over every row computes the windows only for TARGETIDs with several
    rows; a TARGETID with one row gets its flags set directly, whatever they were."""
    data = _rows(6)
    _create_with_defaults(conn, schema_name, data)
    finalize.update_primary(conn, schema_name)
    want = _fetch(conn, schema_name)
    counts = np.unique(data["targetid"], return_counts=True)
    singles = counts[0][counts[1] == 1]
    assert len(singles) and len(singles) < len(counts[0])
    with conn.cursor() as cur:
        cur.execute(f'UPDATE "{schema_name}".ztile SET zcat_nspec = 7, zcat_primary = '
                    f'false, sv_nspec = 3, sv_primary = true, main_nspec = 2, '
                    f'main_primary = true WHERE targetid = ANY(%s)', (singles.tolist(),))
    assert finalize.update_primary(conn, schema_name) == int(np.isin(
        data["targetid"], singles).sum())
    conn.commit()
    assert _fetch(conn, schema_name) == want


@pytest.mark.parametrize("parts", [2, 3])
def test_all_rows_in_parts_match_desispec(conn, schema_name, parts):
    """The end of an initial load flags ztile in parts (TARGETID modulo the build
    sessions, each its own transaction, run at once): together they flag every row as
    desispec does, each part touches only its own TARGETIDs, and a second pass changes
    nothing."""
    data = _rows(7)
    _create_with_defaults(conn, schema_name, data)
    rid = [ids.to_int(x)[0] for x in data["id"]]
    for k in range(parts):
        with conn.cursor() as cur:
            for statement in finalize.update_all_sql(schema_name, "ztile", k, parts):
                cur.execute(statement)
        conn.commit()
        got = _fetch(conn, schema_name)
        later = data["targetid"] % parts > k  # parts not run yet: untouched
        assert all(got[r] == (0, False, 0, False, 0, False)
                   for r, o in zip(rid, later) if o)
    exp, ambiguous = _expected(data)
    _check(data, _fetch(conn, schema_name), exp, ambiguous)
    assert finalize.update_primary(conn, schema_name) == 0
