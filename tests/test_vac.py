"""``specprod-db vac``: FITS tables of value-added catalogs as ``S.vac_NAME``.

The FITS files are written here (fitsio, astropy for the kinds fitsio cannot write) with
every column kind; the loaded rows are compared with values computed here from what was
written, not with the loader's own conversion.  Bad inputs fail naming the file and the
column and leave the old table as it was; a reload is seen by a concurrent reader as the
old or the new table, never a half or an empty one; two files load over ``mpiexec -n 3``.
"""
import json
import os
import secrets
import subprocess
import threading
import time
from decimal import Decimal

import fitsio
import numpy as np
import psycopg2
import pytest
from psycopg2 import sql

from conftest import CLI, query
from test_history import load_in_process

from specprod_db import mpi, vac

from specprod_db.db import ddl

from specprod_db.db.connect import connect
from specprod_db.errors import InputError, RunRefused

#: The written columns: FITS name -> (numpy dtype, expected PostgreSQL type).
KINDS = {
    "TARGETID": ("i8", "bigint"),
    "RA": ("f8", "double precision"),
    "DEC": ("f8", "double precision"),
    "FLAG": ("?", "boolean"),
    "U8": ("u1", "smallint"),
    "I8": ("i1", "smallint"),            # TZERO -128: the signed-byte convention
    "I16": ("i2", "smallint"),
    "I32": ("i4", "integer"),
    "I64": ("i8", "bigint"),
    "U16": ("u2", "integer"),            # TZERO 32768
    "U32": ("u4", "bigint"),             # TZERO 2**31
    "U64": ("u8", "numeric(20,0)"),      # TZERO 2**63
    "F32": ("f4", "real"),
    "F64": ("f8", "double precision"),
    "SCALED": ("i2", "double precision"),  # TSCAL 0.01, TZERO 100 (written below)
    "NAME": ("S8", "character varying(8)"),
    "VEC": (("f4", (3,)), "real[]"),
    "MAT": (("f8", (2, 3)), "double precision[]"),  # TDIM (3,2)
    "IVEC": (("i4", (4,)), "integer[]"),
    "BVEC": (("?", (2,)), "boolean[]"),
    "UVEC": (("u8", (2,)), "numeric(20,0)[]"),
    "U16VEC": (("u2", (2,)), "integer[]"),
    "SVEC": (("S5", (2,)), "character varying(5)[]"),
    "SCVEC": (("i4", (2,)), "double precision[]"),  # scaled vector: TSCAL 0.5, TZERO -1
}
SCALING = {"SCALED": (0.01, 100.0), "SCVEC": (0.5, -1.0)}


def fits_rows(n, seed=0, targetids=None):
    """``n`` rows of every kind: extremes, NaN and awkward strings in the first rows."""
    rng = np.random.default_rng(seed)
    a = np.zeros(n, dtype=[(k, dt) for k, (dt, _) in KINDS.items()])
    a["TARGETID"] = np.arange(n) + 1000 * (seed + 1) if targetids is None else targetids
    a["RA"] = rng.uniform(0, 360, n)
    a["DEC"] = rng.uniform(-30, 80, n)
    for k in KINDS:
        dt = a.dtype[k].base
        if k in ("TARGETID", "RA", "DEC"):
            continue
        shape = (n,) + a.dtype[k].shape
        if dt.kind == "b":
            a[k] = rng.integers(0, 2, shape).astype(bool)
        elif dt.kind in "iu":
            info = np.iinfo(dt)
            a[k] = rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
            flat = a[k].reshape(n, -1)
            flat[0], flat[1 % n] = info.min, info.max
            a[k] = flat.reshape(shape)
        elif dt.kind == "f":
            a[k] = rng.normal(0, 1e3, shape).astype(dt)
            flat = a[k].reshape(n, -1)
            flat[0, 0], flat[1 % n, 0] = np.nan, np.finfo(dt).max
            if n > 2:
                flat[2, 0] = -np.inf
            a[k] = flat.reshape(shape)
        elif dt.kind == "S":
            words = [b"", b"x", b"ab cd", b"trail ", b" lead", b"Z" * dt.itemsize]
            a[k] = np.array(words, dtype=dt)[rng.integers(0, len(words), shape)]
    return a


def write_fits(path, rows, extname="VAC"):
    """``rows`` as a FITS binary table (fitsio: unsigned via TZERO, TDIM for MAT), then
    the scaled columns' TSCAL/TZERO added to the header."""
    if os.path.exists(path):
        os.remove(path)
    with fitsio.FITS(str(path), "rw") as f:
        f.write(rows, extname=extname)
        for k, (scale, zero) in SCALING.items():
            if k in rows.dtype.names:
                n = rows.dtype.names.index(k) + 1
                f[-1].write_key(f"TSCAL{n}", scale)
                f[-1].write_key(f"TZERO{n}", zero)
    return str(path)


def expected(rows, k):
    """Column ``k`` as the database should hold it (numpy, or lists of str)."""
    v = rows[k]
    if k in SCALING:
        scale, zero = SCALING[k]
        return v.astype("f8") * scale + zero
    if v.dtype.base.kind == "S":
        return np.char.rstrip(v, b" ").astype(str)  # FITS: trailing blanks not significant
    return v


def assert_column(k, got, want):
    if want.dtype.kind == "U":
        assert np.array(got, dtype=str).tolist() == want.tolist(), k
    elif want.dtype.kind == "u" and want.dtype.itemsize == 8:
        assert [[int(x) for x in np.ravel(r)] for r in got] == \
            [np.ravel(r).tolist() for r in want], k
        assert all(isinstance(x, Decimal) for x in np.ravel(got[0])), k
    else:
        np.testing.assert_array_equal(np.array(got, dtype=want.dtype), want, err_msg=k)


@pytest.fixture
def bare(pg_dsn, schema_name):
    """An empty schema (no production tables: no foreign key to make)."""
    query(pg_dsn, f'CREATE SCHEMA "{schema_name}"')
    return schema_name


def load(dsn, schema_name, name, *files, stage_dir, **options):
    """``specprod-db vac load`` in this process, on one rank."""
    opts = vac.Options(schema=schema_name, name=name, dsn=dsn, stage_dir=str(stage_dir),
                       sources=[vac.parse_source(str(f)) for f in files], **options)
    return vac.load(mpi.Dispatcher(mpi.SerialComm(), vac.HANDLERS), opts)


def fetch(dsn, schema_name, name, order="targetid"):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT * FROM {} ORDER BY {}").format(
                sql.Identifier(schema_name, "vac_" + name), sql.Identifier(order)))
            names = [d[0] for d in cur.description]
            return names, cur.fetchall()
    finally:
        conn.close()


def tables(dsn, schema_name):
    return {r[0] for r in query(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = %s",
                                (schema_name,))}


def count(dsn, schema_name, name):
    return query(dsn, sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(schema_name, "vac_" + name)))[0][0]


# --- round trip ------------------------------------------------------------------------

def test_every_kind_round_trips(pg_dsn, bare, tmp_path):
    rows = fits_rows(40, seed=1)
    path = write_fits(tmp_path / "kinds.fits", rows)
    info = load(pg_dsn, bare, "kinds", path, stage_dir=tmp_path / "stage")
    assert info["rows"] == 40 and info["key"] == ["targetid"]
    assert info["q3c"] == ["ra", "dec"] and info["foreign_keys"] == {}

    types = dict(query(pg_dsn, """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0""",
                       (f'"{bare}".vac_kinds',)))
    assert types == {k.lower(): pgtype for k, (_, pgtype) in KINDS.items()}

    names, got = fetch(pg_dsn, bare, "kinds")
    assert names == [k.lower() for k in KINDS]           # order and lower case
    order = np.argsort(rows["TARGETID"])
    for i, k in enumerate(KINDS):
        assert_column(k, [r[i] for r in got], expected(rows[order], k))

    # the 2-D column keeps its shape (TDIM (3,2) -> [1:2][1:3]), C order
    dims = query(pg_dsn, f'SELECT DISTINCT array_dims(mat), array_dims(vec) FROM '
                         f'"{bare}".vac_kinds')
    assert dims == [("[1:2][1:3]", "[1:3]")]
    t = int(rows["TARGETID"][5])
    assert query(pg_dsn, f'SELECT mat[2][1] FROM "{bare}".vac_kinds WHERE targetid = %s',
                 (t,))[0][0] == rows["MAT"][5][1][0]

    # key, q3c index, and a cone search through it
    idx = {r[0] for r in query(pg_dsn, "SELECT indexname FROM pg_indexes WHERE "
                                       "schemaname = %s", (bare,))}
    assert idx == {"vac_kinds_pkey", "ix_vac_kinds_q3c_ang2ipix"}
    ra, dec = float(rows["RA"][3]), float(rows["DEC"][3])
    assert query(pg_dsn, f'SELECT targetid FROM "{bare}".vac_kinds WHERE '
                         f'q3c_radial_query(ra, dec, %s, %s, 1e-4)',
                 (ra, dec)) == [(int(rows["TARGETID"][3]),)]
    assert tables(pg_dsn, bare) == {"vac_kinds"}


def test_hdu_by_name_and_number(pg_dsn, bare, tmp_path):
    rows = fits_rows(5)
    path = write_fits(tmp_path / "h.fits", rows, extname="ZCAT")
    stage_dir = tmp_path / "stage"  # not the FITS file's directory: a stage dir is ours alone
    assert load(pg_dsn, bare, "a", f"{path}:ZCAT", stage_dir=stage_dir)["rows"] == 5
    assert load(pg_dsn, bare, "b", f"{path}:1", stage_dir=stage_dir)["rows"] == 5
    with pytest.raises(InputError, match=r"h\.fits\[0\]: not a binary table"):
        load(pg_dsn, bare, "c", f"{path}:0", stage_dir=stage_dir)
    with pytest.raises(InputError, match="no HDU 'NOPE'"):
        load(pg_dsn, bare, "c", f"{path}:NOPE", stage_dir=stage_dir)


# --- bad input: a clear error, nothing loaded, the old table intact -------------------

def _unsupported(path, kind):
    """A FITS file with a TARGETID and one column of an unsupported kind."""
    from astropy.io import fits
    n = 3
    cols = [fits.Column(name="TARGETID", format="K", array=np.arange(n))]
    if kind == "complex":
        cols.append(fits.Column(name="CPLX", format="C", array=np.ones(n, "c8")))
    elif kind == "varlen":
        cols.append(fits.Column(name="VLA", format="PJ()", array=np.array(
            [np.arange(k + 1) for k in range(n)], dtype=object)))
    elif kind == "bits":
        cols.append(fits.Column(name="BITS", format="8X", array=np.zeros((n, 8), bool)))
    fits.BinTableHDU.from_columns(cols).writeto(path, overwrite=True)
    return str(path)


@pytest.fixture
def loaded_old(pg_dsn, bare, tmp_path):
    """``vac_cat`` loaded with 10 rows (the old version bad reloads must leave)."""
    rows = fits_rows(10, seed=7)
    load(pg_dsn, bare, "cat", write_fits(tmp_path / "old.fits", rows),
         stage_dir=tmp_path / "stage")
    return fetch(pg_dsn, bare, "cat")


def _intact(pg_dsn, schema_name, before):
    assert repr(fetch(pg_dsn, schema_name, "cat")) == repr(before)  # NaN == NaN
    assert tables(pg_dsn, schema_name) == {"vac_cat"}  # no __new left
    assert [v["rows"] for v in vac.describe_all(connect(pg_dsn), schema_name)] == [10]


@pytest.mark.parametrize("kind, column, what", [
    ("complex", "CPLX", "complex"), ("varlen", "VLA", "variable-length"),
    ("bits", "BITS", "bit")])
def test_unsupported_type(pg_dsn, bare, tmp_path, loaded_old, kind, column, what):
    path = _unsupported(tmp_path / f"{kind}.fits", kind)
    with pytest.raises(InputError) as err:
        load(pg_dsn, bare, "cat", path, stage_dir=tmp_path / "stage")
    message = str(err.value)
    assert path in message and f"column {column}" in message and what in message
    assert "nothing loaded" in message
    _intact(pg_dsn, bare, loaded_old)


def test_duplicate_keys(pg_dsn, bare, tmp_path, loaded_old):
    # within one file
    rows = fits_rows(6, seed=2)
    rows["TARGETID"][4] = rows["TARGETID"][1]
    path = write_fits(tmp_path / "dup.fits", rows)
    with pytest.raises(InputError) as err:
        load(pg_dsn, bare, "cat", path, stage_dir=tmp_path / "stage")
    message = str(err.value)
    assert path in message and "TARGETID" in message
    assert f"targetid={int(rows['TARGETID'][1])}" in message and "rows 1 and 4" in message
    _intact(pg_dsn, bare, loaded_old)

    # across two files: both named
    a = write_fits(tmp_path / "a.fits", fits_rows(5, seed=3))
    other = fits_rows(5, seed=4)
    other["TARGETID"][2] = fits_rows(5, seed=3)["TARGETID"][3]
    b = write_fits(tmp_path / "b.fits", other)
    with pytest.raises(InputError) as err:
        load(pg_dsn, bare, "cat", a, b, stage_dir=tmp_path / "stage")
    message = str(err.value)
    assert a in message and b in message and f"targetid={int(other['TARGETID'][2])}" \
        in message
    _intact(pg_dsn, bare, loaded_old)

    # a composite --key: its columns are named
    rows = fits_rows(6, seed=5)
    rows["I16"][3], rows["I32"][3] = rows["I16"][0], rows["I32"][0]
    path = write_fits(tmp_path / "dup2.fits", rows)
    with pytest.raises(InputError, match=r"I16, I32.*rows 0 and 3"):
        load(pg_dsn, bare, "cat", path, key=["i16", "I32"], stage_dir=tmp_path / "stage")
    _intact(pg_dsn, bare, loaded_old)


def test_files_that_differ(pg_dsn, bare, tmp_path, loaded_old):
    a = write_fits(tmp_path / "a.fits", fits_rows(5, seed=3))
    rows = fits_rows(5, seed=4)
    rows["F64"] = 1.5
    narrower = rows.astype([(k, "f4" if k == "F64" else rows.dtype[k])
                            for k in rows.dtype.names])
    b = write_fits(tmp_path / "b.fits", narrower)
    with pytest.raises(InputError, match=r"b\.fits: column F64 is real"):
        load(pg_dsn, bare, "cat", a, b, stage_dir=tmp_path / "stage")
    with pytest.raises(InputError, match="key column 'nope'"):
        load(pg_dsn, bare, "cat", a, key=["nope"], stage_dir=tmp_path / "stage")
    with pytest.raises(InputError, match="no such file"):
        load(pg_dsn, bare, "cat", tmp_path / "missing.fits", stage_dir=tmp_path / "stage")
    _intact(pg_dsn, bare, loaded_old)


def test_names_and_other_tables(pg_dsn, bare, tmp_path):
    path = write_fits(tmp_path / "a.fits", fits_rows(3))
    for bad in ("Bad", "a-b", "x__new", "_x", "a" * 40):
        with pytest.raises(RunRefused, match="VAC name"):
            load(pg_dsn, bare, bad, path, stage_dir=tmp_path)
    # a table of that name not made by vac is never replaced nor dropped
    query(pg_dsn, f'CREATE TABLE "{bare}".vac_mine (x int)')
    with pytest.raises(RunRefused, match="not a VAC"):
        load(pg_dsn, bare, "mine", path, stage_dir=tmp_path)
    with pytest.raises(RunRefused, match="not a VAC"):
        vac.drop(connect(pg_dsn), bare, "mine")
    assert tables(pg_dsn, bare) == {"vac_mine"}


def test_duplicate_nan_keys(pg_dsn, bare, tmp_path, loaded_old):
    """NaN != NaN in numpy, but NaN = NaN in PostgreSQL's key: our check finds them
    (any NaN bit pattern; -0.0 = 0.0 too) and names file and rows, not the database."""
    rows = fits_rows(6, seed=2)          # F64[0] is NaN
    rows["F64"][3] = -np.nan             # another NaN (sign bit set)
    path = write_fits(tmp_path / "nan.fits", rows)
    with pytest.raises(InputError) as err:
        load(pg_dsn, bare, "cat", path, key=["F64"], stage_dir=tmp_path / "stage")
    message = str(err.value)
    assert path in message and "duplicate key f64=nan (column F64) in rows 0 and 3" \
        in message and "nothing loaded" in message, message
    _intact(pg_dsn, bare, loaded_old)

    # a composite key across two files: row 0 of each has I16 = -32768, F32 = NaN
    a, b = fits_rows(4, seed=3), fits_rows(4, seed=4)
    fa, fb = write_fits(tmp_path / "a.fits", a), write_fits(tmp_path / "b.fits", b)
    with pytest.raises(InputError) as err:
        load(pg_dsn, bare, "cat", fa, fb, key=["I16", "F32"], stage_dir=tmp_path / "stage")
    message = str(err.value)
    assert message.startswith(f"{fa}: duplicate key i16=-32768, f32=nan (columns I16, "
                              f"F32) in rows 0 and 0 of {fb}"), message
    # -0.0 = 0.0, as in the database
    b["F64"][0] = 1.0
    a["F64"][1], b["F64"][3] = 0.0, -0.0
    a["I32"][1], b["I32"][3] = 5, 5
    fa, fb = write_fits(tmp_path / "a.fits", a), write_fits(tmp_path / "b.fits", b)
    with pytest.raises(InputError, match=r"duplicate key f64=0\.0, i32=5 .* rows 1 and 3"):
        load(pg_dsn, bare, "cat", fa, fb, key=["F64", "I32"], stage_dir=tmp_path / "stage")
    _intact(pg_dsn, bare, loaded_old)


def _vac_cli(dsn, *argv):
    return subprocess.run(CLI + ["vac", "load", *argv, "--db", dsn], capture_output=True,
                          text=True, timeout=120)


def _error_line(r):
    """The one line of a refusal on stderr (the log's lines aside), no traceback."""
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("specprod-db:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


def test_empty_file_does_not_replace_a_loaded_vac(pg_dsn, bare, tmp_path, loaded_old):
    """A file without a row replaces a loaded VAC only with --allow-empty (else exit 2,
    the old table kept); a first load of an empty file makes an empty table."""
    empty = write_fits(tmp_path / "empty.fits", fits_rows(3)[:0])
    r = _vac_cli(pg_dsn, "--schema", bare, "--name", "cat", empty, "--stage-dir",
                 str(tmp_path / "stage"))
    assert r.returncode == 2, r.stdout + r.stderr
    err = _error_line(r)
    assert f"{empty}: no row; {bare}.vac_cat holds 10 rows" in err and "--allow-empty" in err
    _intact(pg_dsn, bare, loaded_old)

    r = _vac_cli(pg_dsn, "--schema", bare, "--name", "cat", empty, "--allow-empty",
                 "--stage-dir", str(tmp_path / "stage"))
    assert r.returncode == 0, r.stderr
    assert count(pg_dsn, bare, "cat") == 0
    info = load(pg_dsn, bare, "fresh", empty, stage_dir=tmp_path / "stage")
    assert info["rows"] == 0 and count(pg_dsn, bare, "fresh") == 0


@pytest.fixture
def role(pg_dsn, bare):
    """``role(grants) -> dsn``: a login role with ``grants`` (SQL run as the test's own
    role, ROLE in them replaced by its name), dropped afterwards."""
    import re
    made = []

    def make(*grants):
        name = f"vac_{secrets.token_hex(4)}"
        made.append(name)
        query(pg_dsn, f'CREATE ROLE "{name}" LOGIN')
        for g in grants:
            query(pg_dsn, g.replace("ROLE", f'"{name}"'))
        return re.sub(r"user=\S+", f"user={name}", pg_dsn) if "user=" in pg_dsn \
            else f"{pg_dsn} user={name}"
    yield make
    for name in made:
        query(pg_dsn, f'DROP OWNED BY "{name}"; DROP ROLE "{name}"')


def test_permission_errors_are_worded_as_such(pg_dsn, bare, tmp_path, loaded_old, role,
                                              production):
    """A role that cannot create the table, or replace another role's VAC, or reference
    a production table: one line saying permission denied, naming the role, exit 2;
    nothing loaded, the old table kept."""
    path = write_fits(tmp_path / "a.fits", fits_rows(5, seed=9))

    def refused(dsn, schema_name, name, *words):
        r = _vac_cli(dsn, "--schema", schema_name, "--name", name, path, "--stage-dir",
                     str(tmp_path / f"stage-{schema_name}"))
        assert r.returncode == 2, r.stdout + r.stderr
        err = _error_line(r)
        assert "permission denied: " in err and "nothing loaded" in err, err
        for w in words:
            assert w in err, err

    no_create = role(f'GRANT USAGE ON SCHEMA "{bare}" TO ROLE')
    refused(no_create, bare, "other", "lacks CREATE on schema", "GRANT CREATE ON SCHEMA")
    refused(no_create, bare, "cat", "lacks CREATE on schema")
    not_owner = role(f'GRANT USAGE, CREATE ON SCHEMA "{bare}" TO ROLE')
    refused(not_owner, bare, "cat", "vac_cat belongs to role", "cannot replace it")
    r = subprocess.run(CLI + ["vac", "drop", "--schema", bare, "--name", "cat", "--db",
                              not_owner], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "permission denied: " in _error_line(r), r.stderr
    assert "must be owner of table vac_cat" in r.stderr and "not dropped" in r.stderr
    _intact(pg_dsn, bare, loaded_old)
    # the server's own refusal: a foreign key to photometry needs REFERENCES on it
    rows = fits_rows(3, seed=1)
    rows["TARGETID"] = [int(t) for t, in query(
        pg_dsn, f'SELECT targetid FROM "{production}".photometry ORDER BY 1 LIMIT 3')]
    path = write_fits(tmp_path / "a.fits", rows)
    no_references = role(f'GRANT USAGE, CREATE ON SCHEMA "{production}" TO ROLE')
    refused(no_references, production, "fkvac", "permission denied for table photometry")
    assert "vac_fkvac" not in tables(pg_dsn, production)
    assert "vac_fkvac__new" not in tables(pg_dsn, production)


# --- atomic reload ---------------------------------------------------------------------

def test_reload_is_atomic_for_readers(pg_dsn, bare, tmp_path, monkeypatch, caplog):
    # attempts shorter than the holder's transactions: the swap must give up and retry
    monkeypatch.setattr(vac.catalog, "SWAP_ATTEMPT", 0.1)
    old, new = 3000, 4500
    load(pg_dsn, bare, "cat", write_fits(tmp_path / "v1.fits", fits_rows(old, seed=1)),
         stage_dir=tmp_path / "stage")
    seen, errors, stop = [], [], threading.Event()

    def counter():  # one statement at a time, as fast as it goes
        conn = psycopg2.connect(pg_dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute(f'SELECT count(*), count(DISTINCT targetid) FROM '
                                f'"{bare}".vac_cat')
                    seen.append(cur.fetchone())
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
        finally:
            conn.close()

    holding = threading.Event()

    def holder():  # a long transaction on the table: the swap must wait and retry
        conn = psycopg2.connect(pg_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(f'SELECT count(*) FROM "{bare}".vac_cat')
                seen.append(cur.fetchone() * 2)
                holding.set()
                time.sleep(1.5)
            conn.commit()
        except Exception as err:  # noqa: BLE001
            errors.append(err)
        finally:
            holding.set()
            conn.close()

    threads = [threading.Thread(target=f) for f in (counter, counter, holder)]
    for t in threads:
        t.start()
    try:
        holding.wait(30)
        load(pg_dsn, bare, "cat", write_fits(tmp_path / "v2.fits", fits_rows(new, seed=2)),
             stage_dir=tmp_path / "stage")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert "the replacement waits" in caplog.text
    assert {s for s in seen} == {(old, old), (new, new)}, set(seen)
    assert seen[-1] == (new, new) and count(pg_dsn, bare, "cat") == new
    assert tables(pg_dsn, bare) == {"vac_cat"}
    assert [v["rows"] for v in vac.describe_all(connect(pg_dsn), bare)] == [new]


# --- foreign keys to a loaded production -----------------------------------------------

@pytest.fixture(scope="module")
def production(pg_dsn, small_production, tmp_path_factory):
    """A schema with the small mock production loaded (photometry, ztile ...)."""
    name = "test_" + secrets.token_hex(4)
    conn = connect(pg_dsn)
    ddl.create_schema(conn, name)
    conn.close()
    try:
        assert load_in_process(pg_dsn, name, small_production[0],
                               tmp_path_factory.mktemp("vac") / "stage") in (0, 1)
        yield name
    finally:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_foreign_keys(pg_dsn, production, tmp_path):
    targetids = [r[0] for r in query(pg_dsn, f'SELECT targetid FROM "{production}".photometry '
                                             f'ORDER BY targetid LIMIT 20')]
    good = write_fits(tmp_path / "good.fits", fits_rows(20, targetids=targetids))
    info = load(pg_dsn, production, "fk", good, stage_dir=tmp_path / "s")
    assert info["foreign_keys"] == {"photometry": ["targetid"]}
    fk = query(pg_dsn, "SELECT conname, confrelid = %s::regclass FROM pg_constraint WHERE "
                       "conrelid = %s::regclass AND contype = 'f'",
               (f'"{production}".photometry', f'"{production}".vac_fk'))
    assert fk == [("vac_fk_photometry_fkey", True)]

    # one TARGETID with no photometry: named with its file, nothing replaced
    rows = fits_rows(20, targetids=targetids)
    rows["TARGETID"][7] = 123456789
    bad = write_fits(tmp_path / "bad.fits", rows)
    before = fetch(pg_dsn, production, "fk")
    with pytest.raises(InputError) as err:
        load(pg_dsn, production, "fk", bad, stage_dir=tmp_path / "s")
    message = str(err.value)
    assert bad in message and "TARGETID" in message and "123456789" in message
    assert "row 7" in message and "photometry" in message and "--no-fk" in message
    assert repr(fetch(pg_dsn, production, "fk")) == repr(before)
    assert not {t for t in tables(pg_dsn, production) if t.startswith("vac_fk_")}

    # --no-fk loads it, without the constraint
    assert load(pg_dsn, production, "fk", bad, fk=False, stage_dir=tmp_path / "s")[
        "foreign_keys"] == {}
    assert count(pg_dsn, production, "fk") == 20
    assert not query(pg_dsn, "SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass "
                             "AND contype = 'f'", (f'"{production}".vac_fk',))

    # a key of the ztile rows: a foreign key to ztile's unique key, not to photometry
    z = query(pg_dsn, f'SELECT targetid, spgrp, spgrpval, tileid FROM "{production}".ztile '
                      f'ORDER BY id LIMIT 8')
    zrows = np.zeros(len(z), dtype=[("TARGETID", "i8"), ("SPGRP", "S10"),
                                    ("SPGRPVAL", "i4"), ("TILEID", "i4"), ("Z_EMLINE", "f4")])
    for i, r in enumerate(z):
        zrows[i] = (r[0], r[1].encode(), r[2], r[3], 0.5)
    path = write_fits(tmp_path / "emline.fits", zrows)
    info = load(pg_dsn, production, "emline", path, key=["TARGETID", "SPGRP", "SPGRPVAL",
                                                         "TILEID"], stage_dir=tmp_path / "s")
    assert info["foreign_keys"] == {"ztile": ["targetid", "spgrp", "spgrpval", "tileid"]}
    assert query(pg_dsn, f'SELECT count(*) FROM "{production}".vac_emline e JOIN '
                         f'"{production}".ztile z USING (targetid, spgrp, spgrpval, '
                         f'tileid)')[0][0] == len(z)
    for name in ("fk", "emline"):
        assert vac.drop(connect(pg_dsn), production, name)


# --- MPI, list, drop -------------------------------------------------------------------

def test_two_files_over_mpi_then_list_and_drop(pg_dsn, bare, tmp_path, mpirun):
    a, b = fits_rows(300, seed=1), fits_rows(200, seed=2)
    b = b.astype([(k, "S12" if k == "NAME" else b.dtype[k]) for k in b.dtype.names])
    fa = write_fits(tmp_path / "a.fits", a)
    fb = write_fits(tmp_path / "b.fits", b, extname="SECOND")
    env = dict(os.environ, SPECPROD_DB_DSN=pg_dsn)
    r = mpirun(3, CLI + ["vac", "load", "--schema", bare, "--name", "two", fa,
                         f"{fb}:SECOND", "--stage-dir", str(tmp_path / "stage")], env=env)
    assert f"{bare}.vac_two: 500 rows, key targetid" in r.stdout
    assert "vac tasks: 2/2 done" in r.stdout + r.stderr
    names, got = fetch(pg_dsn, bare, "two")
    both = np.concatenate([a.astype(b.dtype), b])
    both = both[np.argsort(both["TARGETID"])]
    for i, k in enumerate(KINDS):
        assert_column(k, [row[i] for row in got], expected(both, k))
    # the widest string of the two files decides the column
    assert query(pg_dsn, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                         "attrelid = %s::regclass AND attname = 'name'",
                 (f'"{bare}".vac_two',)) == [("character varying(12)",)]
    assert not os.listdir(tmp_path / "stage" / "vac" / "two")  # stage files removed

    def cli(*argv, schema_name=bare):
        return subprocess.run(CLI + ["vac", *argv, "--schema", schema_name, "--db", pg_dsn],
                              capture_output=True, text=True, timeout=120)

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    (info,) = json.loads(listed.stdout)
    assert info["name"] == "two" and info["rows"] == 500 and info["key"] == ["targetid"]
    assert info["table"] == f"{bare}.vac_two" and info["loaded_at"]
    assert [(s["file"], s["hdu"], s["rows"]) for s in info["sources"]] == \
        [(fa, None, 300), (fb, "SECOND", 200)]
    text = cli("list").stdout
    assert "two" in text and "500" in text and fa in text and f"{fb}[SECOND]" in text

    assert cli("drop", "--name", "two").returncode == 0
    assert tables(pg_dsn, bare) == set()
    assert cli("drop", "--name", "two").returncode == 1
    assert json.loads(cli("list", "--json").stdout) == []
    missing = cli("list", schema_name="no_such_schema_x")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_bad_file_over_mpi_fails_cleanly(pg_dsn, bare, tmp_path, mpirun):
    good = write_fits(tmp_path / "good.fits", fits_rows(50))
    bad = _unsupported(tmp_path / "bad.fits", "complex")
    r = mpirun(3, CLI + ["vac", "load", "--schema", bare, "--name", "x", good, bad,
                         "--stage-dir", str(tmp_path / "stage")],
               env=dict(os.environ, SPECPROD_DB_DSN=pg_dsn), check=False)
    assert r.returncode == 1, r.stderr
    assert f"{bad}" in r.stderr and "column CPLX" in r.stderr
    assert tables(pg_dsn, bare) == set()


def test_reload_gives_up_while_the_table_stays_in_use(pg_dsn, bare, tmp_path, monkeypatch,
                                                      loaded_old):
    monkeypatch.setattr(vac.catalog, "SWAP_ATTEMPT", 0.1)
    reader = psycopg2.connect(pg_dsn)
    try:
        with reader.cursor() as cur:  # holds the old table for the whole reload
            cur.execute(f'SELECT count(*) FROM "{bare}".vac_cat')
            with pytest.raises(RunRefused, match=r"stayed in use for 1 s: not replaced"):
                load(pg_dsn, bare, "cat", write_fits(tmp_path / "v2.fits", fits_rows(20)),
                     lock_timeout=1.0, stage_dir=tmp_path / "stage")
    finally:
        reader.close()
    _intact(pg_dsn, bare, loaded_old)
