"""db/lock.read_state: a load's --tiles reads whole state rows of those tiles only."""
from psycopg2 import sql

from specprod_db.db.lock import read_state


def test_tiles_read_whole_the_others_narrow(created, schema_name):
    s = sql.Identifier(schema_name)
    with created.cursor() as cur:
        cur.execute(sql.SQL("INSERT INTO {}.load_run (started, ranks, command, options) "
                            "VALUES (now(), 1, 'load', '{{}}') RETURNING id").format(s))
        run_id = cur.fetchone()[0]
        for tileid, status in ((1, "loaded"), (2, "failed"), (3, "loaded")):
            cur.execute(sql.SQL("INSERT INTO {}.tile_state (tileid, status, tile_hash, line, "
                                "redrock_fingerprint, run_id, loaded_at) VALUES (%s, %s, "
                                "'h', '{{}}', 'fp', %s, now())").format(s),
                        (tileid, status, run_id))
    every = read_state(created, schema_name)
    some = read_state(created, schema_name, [3])
    created.rollback()
    assert set(every) == set(some) == {1, 2, 3}
    assert some[3] == every[3] and every[3]["line"] == "{}"
    for tileid in (1, 2):  # what the guard on deletes counts is there; nothing else
        assert {k: some[tileid][k] for k in ("tileid", "status", "in_tile_table")} == \
            {k: every[tileid][k] for k in ("tileid", "status", "in_tile_table")}
        assert some[tileid]["line"] is None and some[tileid]["tile_hash"] is None
        assert set(some[tileid]) == set(every[tileid])
