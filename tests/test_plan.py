"""The planner alone: winning lines (decision 1), what counts as a change (decision 2),
deletes and their guards (decision 3)."""
import numpy as np
import pytest

from specprod_db import plan

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


def test_delete_guards():
    line = plan.line_dict(_table((1, 10.0, 20240101, "main", "")), 0)
    state = {i: _state(dict(line, TILEID=i)) for i in range(1, 5)}
    t = _table(*[(i, 10.0, 20240101, "main", "") for i in range(2, 5)])
    with pytest.raises(plan.MassDeleteRefused, match="1 of 4 loaded tiles"):
        plan.make_plan(t, {}, state, _fp)
    actions = plan.make_plan(t, {}, state, _fp, no_delete=True)
    assert actions[0].action == plan.SKIP and "--no-delete" in actions[0].reason
    assert plan.make_plan(t, {}, state, _fp, max_delete_fraction=0.25)[0].action == plan.DELETE
