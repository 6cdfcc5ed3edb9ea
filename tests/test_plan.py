"""The planner alone: winning lines (decision 1), what counts as a change (decision 2),
deletes and their guards (decision 3)."""
import numpy as np
import pytest

from specprod_db.load import plan

DT = [("TILEID", "i4"), ("EFFTIME_SPEC", "f8"), ("LASTNIGHT", "i4"), ("SURVEY", "U8"),
      ("UPDATED", "U24")]


def _table(*lines):
    return np.array(list(lines), dtype=DT)


def _fp(tileid, line, old):
    return {"exposures_hash": "e", "redrock_fingerprint": "r",
            "fiberassign_fingerprint": "f"}


def _state(loaded, **over):
    """tile_state of a tile loaded from the tiles-file line ``loaded``."""
    import json
    d = {"status": "loaded", "tile_hash": plan.tile_hash(loaded), "exposures_hash": "e",
         "redrock_fingerprint": "r", "fiberassign_fingerprint": "f",
         "updated": loaded["UPDATED"], "line": json.dumps(loaded)}
    d.update(over)
    return d


def test_winning_line_latest_updated_with_offset_then_last():
    t = _table((1, 10.0, 20240101, "main", "2024-11-03T01:30:00-0700"),   # 08:30 UTC
               (1, 20.0, 20240102, "main", "2024-11-03T01:10:00-0800"),   # 09:10 UTC wins
               (2, 10.0, 20240101, "main", ""),
               (2, 30.0, 20240101, "main", ""),                             # tie: last line
               (3, 10.0, 20240101, "main", "2024-01-01T00:00:00-0800"),
               (3, 50.0, 20240101, "main", ""))                             # empty is oldest
    assert plan.winning_lines(t) == {1: 1, 2: 3, 3: 4}


def test_actions_and_reasons():
    line = plan.line_dict(_table((1, 10.0, 20240101, "main", "2024-01-01T00:00:00-0800")), 0)
    t = _table((1, 10.0, 20240101, "main", "2024-01-02T00:00:00-0800"),   # UPDATED moved
               (2, 10.0, 20240101, "main", ""),                             # new
               (3, 0.0, 20240101, "main", ""),                              # never usable
               (4, 12.0, 20240103, "main", ""),                             # changed
               (5, 0.0, 20240101, "main", ""))                              # withdrawn
    state = {1: _state(line), 4: _state(dict(line, TILEID=4, UPDATED="")),
             5: _state(dict(line, TILEID=5)), 6: _state(dict(line, TILEID=6))}
    actions = {a.tileid: a for a in plan.make_plan(
        t, {None: "unreadable TILEID"}, state, _fp, allow_mass_delete=True)}
    assert actions[1].action == plan.REFRESH
    assert actions[2].action == plan.INSERT
    assert actions[3].action == plan.SKIP
    assert actions[4].action == plan.UPDATE
    assert "EFFTIME_SPEC" in actions[4].reason and "LASTNIGHT" in actions[4].reason
    assert not actions[4].full
    assert actions[5].action == plan.DELETE and "EFFTIME_SPEC" in actions[5].reason
    assert actions[6].action == plan.DELETE and "no longer" in actions[6].reason


def test_changed_inputs_and_failures():
    line = plan.line_dict(_table((1, 10.0, 20240101, "main", "")), 0)
    t = _table((1, 10.0, 20240101, "main", ""), (2, 10.0, 20240101, "main", ""))

    def fp(tileid, line, old):
        return dict(_fp(tileid, line, old), fiberassign_fingerprint="changed")
    actions = plan.make_plan(t, {2: "line 3: EFFTIME_SPEC: not a number"},
                             {1: _state(line)}, fp)
    assert [(a.tileid, a.action, a.full) for a in actions] == [
        (1, plan.UPDATE, True), (2, plan.FAIL, True)]
    assert "fiberassign file changed" in actions[0].reason


def _loaded(n_loaded, n_deleted, **kw):
    """The plan of ``n_loaded`` loaded tiles of which the first ``n_deleted`` left the
    tiles file."""
    line = plan.line_dict(_table((1, 10.0, 20240101, "main", "")), 0)
    state = {i: _state(dict(line, TILEID=i)) for i in range(1, n_loaded + 1)}
    t = _table(*[(i, 10.0, 20240101, "main", "") for i in range(n_deleted + 1,
                                                                 n_loaded + 1)])
    return plan.make_plan(t, {}, state, _fp, **kw)


def _deleted(actions):
    return [a.tileid for a in actions if a.action == plan.DELETE]


def test_delete_guards():
    # one withdrawn tile of a small production: no flag needed (the floor)
    assert _deleted(_loaded(6, 1)) == [1]
    with pytest.raises(plan.MassDeleteRefused, match="1 of 4 loaded tiles"):
        _loaded(4, 1, max_delete_count=0)
    actions = _loaded(4, 1, no_delete=True)
    assert actions[0].action == plan.SKIP and "--no-delete" in actions[0].reason
    assert _deleted(_loaded(4, 1, max_delete_count=0, max_delete_fraction=0.3)) == [1]
    assert _deleted(_loaded(4, 4, allow_mass_delete=True)) == [1, 2, 3, 4]


@pytest.mark.parametrize("loaded,deleted,refused,count", [
    (6, 1, False, 3),        # the example: one withdrawn tile of six
    (1000, 100, True, 3),    # the example: a truncated file, 10 % exactly
    (1000, 99, False, 3),    # just under the fraction
    (1000, 101, True, 3),
    (6, 3, False, 3),        # the floor: 3 deletes are never a mass delete (50 %)
    (6, 4, True, 3),         # above the floor and >= 10 %
    (40, 4, True, 3),        # 4 > 3 and 4 >= 0.1 x 40: both edges at once
    (41, 4, False, 3),       # 4 < 4.1
    (3, 3, False, 3),        # every loaded tile, but no more than the floor
    (30, 3, True, 2),        # 0.1 x 30 is 3.0000000000000004 in floats: exact arithmetic
    (30, 2, False, 1),       # above the floor, under the fraction
])
def test_mass_delete_edges(loaded, deleted, refused, count):
    """Refused when deletes > --max-delete-count (3) AND deletes >= --max-delete-fraction
    (0.1) x loaded tiles."""
    assert plan.is_mass_delete(deleted, loaded, 0.1, count) == refused
    if refused:
        with pytest.raises(plan.MassDeleteRefused, match=(
                rf"{deleted} of {loaded} loaded tiles would be deleted: more than "
                rf"--max-delete-count {count} and at least --max-delete-fraction 0.1 ")):
            _loaded(loaded, deleted, max_delete_count=count)
        assert len(_deleted(_loaded(loaded, deleted, max_delete_count=count,
                                    allow_mass_delete=True))) == deleted
    else:
        assert len(_deleted(_loaded(loaded, deleted, max_delete_count=count))) == deleted


def test_damaged_tiles_file_suspends_deletes():
    """Any bad line: no DELETE at all (neither "left the file" nor EFFTIME_SPEC <= 0),
    whatever the guards say; INSERT/UPDATE/FAIL go on; the next run with a whole file
    deletes normally."""
    line = plan.line_dict(_table((1, 10.0, 20240101, "main", "")), 0)
    state = {i: _state(dict(line, TILEID=i)) for i in range(1, 11)}
    # a file cut mid-line: tiles 7..10 lost (7 is the cut line, unattributable),
    # tile 2 withdrawn, tile 3 changed, tile 11 new, tile 4's line malformed
    t = _table((1, 10.0, 20240101, "main", ""), (2, 0.0, 20240101, "main", ""),
               (3, 12.0, 20240102, "main", ""), (5, 10.0, 20240101, "main", ""),
               (6, 10.0, 20240101, "main", ""), (11, 10.0, 20240101, "main", ""))
    problems = {4: "tiles file tiles-daily.csv line 5: NEXP not an integer",
                None: "tiles file tiles-daily.csv line 8: 3 fields, header has 22"}
    reason = "tiles file damaged (2 bad lines): deletes suspended"
    assert plan.damaged_reason(2) == reason
    for kw in ({}, {"no_delete": True}, {"allow_mass_delete": True},
               {"max_delete_count": 0, "max_delete_fraction": 0.0}):
        actions = {a.tileid: a for a in plan.make_plan(t, problems, state, _fp,
                                                       bad_lines=2, **kw)}
        assert not [a for a in actions.values() if a.action == plan.DELETE], kw
        for tid in (2, 7, 8, 9, 10):
            assert (actions[tid].action, actions[tid].reason) == (plan.SKIP, reason), kw
        assert actions[3].action == plan.UPDATE
        assert actions[11].action == plan.INSERT
        assert actions[4].action == plan.FAIL and "NEXP" in actions[4].reason
        assert actions[1].action == actions[5].action == plan.UNCHANGED
    # the whole file again (tiles 7..10 back, 2 still withdrawn): deletes as usual
    whole = _table(*(list(t) + [(i, 10.0, 20240101, "main", "") for i in (4, 7, 8, 9, 10)]))
    actions = {a.tileid: a for a in plan.make_plan(whole, {}, state, _fp)}
    assert _deleted(actions.values()) == [2]
    assert actions[2].reason == "EFFTIME_SPEC = 0.0"
    # a damaged file that deletes nothing anyway plans as usual
    actions = plan.make_plan(_table((1, 10.0, 20240101, "main", "")), {None: "x"},
                             {1: _state(line)}, _fp, bad_lines=1)
    assert [(a.tileid, a.action) for a in actions] == [(1, plan.UNCHANGED)]


def test_damaged_file_is_not_refused_as_mass_delete():
    """A file cut mid-line that would delete 100 of 1000 tiles: deletes suspended, not a
    MassDeleteRefused (the cut is known; the run loads the rest and exits 1)."""
    actions = _loaded(1000, 100, bad_lines=1)
    assert not _deleted(actions)
    assert sum(a.action == plan.SKIP for a in actions) == 100
