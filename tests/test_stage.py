"""The stage directory is ours alone (issue 16 §3).

* A schema (or database) name never becomes a path segment unchecked: names are encoded
  (:func:`stage.path_segment`), so ``--schema ../../x`` stays inside the stage base, and
  working names (``daily``, ``loa``, ``test_ab12cd34``) keep their directory.
* Claiming a directory is atomic: of loads claiming one fresh directory at once exactly
  one wins; an ``owner.json`` that is not an object naming a database and a schema is an
  unreadable claim (exit 2); a directory holding files we did not write is not claimed.
* Cleanup deletes only the names this project writes, in a directory it claimed.
"""
import json
import multiprocessing
import os

import pytest

from conftest import mock_env, load, query
from specprod_db import stage
from specprod_db.errors import EXIT_REFUSED, RunRefused, StageError


# --- the path segment of a name --------------------------------------------------------

@pytest.mark.parametrize("name", ["daily", "loa", "fuji", "test_ab12cd34", "Jura_2",
                                  "iron-v2"])
def test_working_names_keep_their_directory(name):
    assert stage.path_segment(name) == name


NASTY = ["../../x", "..", ".", "a/b", "/abs", ".hidden", "a b", "50%", "%2E%2E",
         "x\x00y", "é", "ünïcødé/..", "-", "a\\b", "$x", "tile-1.h5"]


@pytest.mark.parametrize("name", NASTY)
def test_any_name_is_one_safe_segment(name):
    seg = stage.path_segment(name)
    assert seg and "/" not in seg and "\x00" not in seg and seg not in (".", "..")
    assert not seg.startswith(".")
    assert os.path.basename(seg) == seg and os.path.normpath(seg) == seg


def test_segments_of_different_names_differ():
    names = NASTY + ["daily", "Daily", "%", "%25", "a%20b", "a b"]
    assert len({stage.path_segment(n) for n in names}) == len(set(names))


def test_empty_name_is_refused():
    with pytest.raises(StageError):
        stage.path_segment("")


@pytest.mark.parametrize("schema_name", ["../../x", "..", "../..", "a/../../b"])
def test_default_directory_stays_inside_the_base(schema_name, tmp_path, monkeypatch):
    base = tmp_path / "base"
    monkeypatch.setenv("SPECPROD_DB_STAGE_DIR", str(base))
    for database in ("123-specprod_db", "123-../..", ".."):
        path = stage.default_directory(database, schema_name)
        real = os.path.realpath(path)
        assert real.startswith(str(base) + os.sep)
        assert os.path.relpath(real, base).count(os.sep) == 1  # BASE/DATABASE/SCHEMA
    assert stage.default_directory("123-specprod_db", "daily") == \
        str(base / "123-specprod_db" / "daily")


def test_schema_name_does_not_escape_the_stage_base(pg_dsn, small_production, mpirun,
                                                    tmp_path):
    """A load of a schema named ``../../victim`` (a legal quoted PostgreSQL name) with the
    default stage directory: its stage files are inside the base and the directory the
    name would reach is untouched (the load used to claim it and delete its ``*.tmp-*``
    and ``tile-*.h5`` files)."""
    from conftest import CLI, LOAD_TIMEOUT, init
    name = "../../victim_" + os.urandom(3).hex()
    base = tmp_path / "base" / "stage"  # BASE/DATABASE/../../victim_* = base/../victim_*
    victim = tmp_path / "base" / name.split("/")[-1]
    victim.mkdir(parents=True)
    for f in ("tile-1.h5", "notes.tmp-1", "tile-2.h5.tmp-3"):
        (victim / f).write_text("not the loader's")
    init(pg_dsn, name)
    try:
        e = mock_env(small_production[0], SPECPROD_DB_DSN=pg_dsn,
                     SPECPROD_DB_STAGE_DIR=str(base))
        mpirun(1, CLI + ["load", "--schema", name], env=e, timeout=LOAD_TIMEOUT)
        assert sorted(os.listdir(victim)) == ["notes.tmp-1", "tile-1.h5", "tile-2.h5.tmp-3"]
        (database,) = os.listdir(base)
        (segment,) = os.listdir(base / database)
        assert segment == stage.path_segment(name)
        owner = json.loads((base / database / segment / stage.OWNER_FILE).read_text())
        assert owner["schema"] == name
    finally:
        query(pg_dsn, 'DROP SCHEMA IF EXISTS "%s" CASCADE' % name.replace('"', '""'))


# --- claiming --------------------------------------------------------------------------

def _race(args):
    directory, schema_name, barrier = args
    barrier.wait()
    try:
        stage.claim(directory, "db", schema_name)
        return True
    except StageError:
        return False


def _racer(queue, results, barrier, me):
    while True:
        directory = queue.get()
        if directory is None:
            return
        results.put((directory, me, _race((directory, f"schema{me}", barrier))))


def test_claim_is_atomic(tmp_path):
    """Four processes claim each of 120 fresh directories at the same instant, each for
    another schema: exactly one wins every time (the old read-then-replace let two win
    in ~7 % of the trials)."""
    ctx = multiprocessing.get_context("fork")
    n, trials = 4, 120
    barrier = ctx.Barrier(n)
    queues = [ctx.Queue() for _ in range(n)]
    results = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(queues[i], results, barrier, i))
             for i in range(n)]
    for p in procs:
        p.start()
    try:
        dirs = []
        for t in range(trials):
            d = tmp_path / f"d{t}"
            d.mkdir()
            dirs.append(str(d))
            for q in queues:
                q.put(str(d))
        wins = {d: [] for d in dirs}
        for _ in range(n * trials):
            d, me, won = results.get(timeout=120)
            if won:
                wins[d].append(me)
    finally:
        for q in queues:
            q.put(None)
        for p in procs:
            p.join(30)
    bad = {d: w for d, w in wins.items() if len(w) != 1}
    assert not bad, f"{len(bad)} of {trials} directories had other than one winner"
    for d, (me,) in wins.items():
        owner = json.loads(open(os.path.join(d, stage.OWNER_FILE)).read())
        assert owner == {"database": "db", "schema": f"schema{me}"}
        assert os.listdir(d) == [stage.OWNER_FILE]  # no claim temporaries left


def test_claim_twice_by_the_same_owner(tmp_path):
    stage.claim(str(tmp_path), "db", "daily")
    stage.claim(str(tmp_path), "db", "daily")
    with pytest.raises(StageError, match="belongs to schema daily of database db"):
        stage.claim(str(tmp_path), "db", "other")


@pytest.mark.parametrize("text", ["[]", "3", '"daily"', "null", "{}",
                                  '{"database": "db", "schema": 3}', '{"schema": "daily"}',
                                  "", "{not json"])
def test_claim_that_is_not_an_object_is_unreadable(text, tmp_path):
    (tmp_path / stage.OWNER_FILE).write_text(text)
    with pytest.raises(StageError, match="unreadable owner.json") as err:
        stage.claim(str(tmp_path), "db", "daily")
    assert isinstance(err.value, RunRefused) and err.value.exit_code == EXIT_REFUSED
    assert str(tmp_path) in str(err.value)


def test_load_with_a_claim_that_is_not_an_object_exits_2(pg_dsn, schemas, small_production,
                                                         mpirun, tmp_path):
    name, stage_dir = schemas(), tmp_path / "stage"
    stage_dir.mkdir()
    (stage_dir / stage.OWNER_FILE).write_text("[]")
    r = load(mpirun, 1, pg_dsn, name, small_production[0], stage_dir, check=False)
    assert r.returncode == 2, r.stderr
    assert "unreadable owner.json" in r.stderr and str(stage_dir) in r.stderr
    assert "AttributeError" not in r.stderr and "Traceback" not in r.stderr
    assert query(pg_dsn, f'SELECT count(*) FROM "{name}".tile')[0][0] == 0


def test_a_directory_of_other_files_is_not_claimed(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    (tmp_path / "tile-7.h5").write_text("looks like ours")
    with pytest.raises(StageError, match="thesis.tex"):
        stage.claim(str(tmp_path), "db", "daily")
    assert not (tmp_path / stage.OWNER_FILE).exists()
    assert sorted(os.listdir(tmp_path)) == ["thesis.tex", "tile-7.h5"]


def test_an_unclaimed_stage_directory_of_ours_is_claimed(tmp_path):
    """A stage directory written before claims existed holds only our names."""
    for f in ("tile-7.h5", "brick-1497p322+16.h5", "manifest.json", "tile-8.h5.tmp-12",
              "catalog-0123abcd.h5", "healpix-main-dark-1234.h5"):
        (tmp_path / f).write_text("")
    (tmp_path / "vac").mkdir()
    stage.claim(str(tmp_path), "db", "daily")
    assert json.loads((tmp_path / stage.OWNER_FILE).read_text())["schema"] == "daily"


# --- cleaning --------------------------------------------------------------------------

def test_cleanup_removes_only_our_temporaries(tmp_path):
    ours = ["tile-1.h5.tmp-12", "brick-1497p322+16.h5.tmp-3", ".manifest.json.tmp-4",
            "catalog-0123abcd.h5.tmp-5", "healpix-main-dark-12.h5.tmp-6", ".probe-7",
            "owner.json.tmp-8-140000"]
    theirs = ["notes.tmp-1", "x.tmp-2", "tile-1.h5.tmp-abc", "data.tmp-3.txt",
              "tile-1.h5"]
    for f in ours + theirs:
        (tmp_path / f).write_text("")
    (tmp_path / "tile-9.h5.tmp-1").mkdir()  # a directory is never removed
    assert stage.cleanup_temporaries(str(tmp_path)) == len(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(theirs + ["tile-9.h5.tmp-1"])


def test_stale_tiles_removal_spares_directories_and_link_targets(tmp_path):
    outside = tmp_path / "outside.h5"
    outside.write_text("keep")
    d = tmp_path / "stage"
    d.mkdir()
    (d / "tile-5.h5").symlink_to(outside)
    (d / "tile-6.h5").mkdir()
    (d / "tile-7.h5").write_text("")
    assert stage.remove_stale_tiles(str(d), [7]) == 1  # the link itself
    assert sorted(os.listdir(d)) == ["tile-6.h5", "tile-7.h5"] and outside.exists()
