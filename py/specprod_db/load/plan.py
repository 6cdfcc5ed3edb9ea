"""The plan: tiles file -> winning line per tile -> diff with the load state.

Decisions (``doc/decisions.md``; DESIGN.md "Decisions where the sources are silent"):

1. Duplicate TILEID lines are allowed.  The winner has the latest ``UPDATED`` parsed with
   its UTC offset (empty is oldest); ties go to the last line.  Duplicates are logged once.
2. ``UPDATED`` alone is not a change.  A loaded tile is UPDATEd when any other column of
   its winning line differs from the line loaded, or its inputs changed: its qualifying
   exposures, its cumulative redrock files, or its fiberassign file (fingerprints).  When
   only ``UPDATED`` moved, the recorded state is refreshed (REFRESH) and nothing reloads.
3. A tile whose winning line has ``EFFTIME_SPEC <= 0``, or that left the tiles file, is
   DELETEd if it holds rows in the database, whatever its recorded status (a failed
   UPDATE keeps the older rows: decision 15), else SKIPped; a failed tile that never
   held rows is DELETEd too, which deletes nothing and marks it ``deleted`` ("gone"), so
   it is no longer reported as failed.
4. A value the plan depends on that does not parse is a bad line, never a decision
   (decision 14): the reader (:func:`specprod_db.extract.tile.read_tiles_file`) checks
   TILEID, EFFTIME_SPEC (finite), LASTNIGHT (:func:`parse_night`), UPDATED
   (:func:`parse_updated`, the parser :func:`winning_lines` uses), SURVEY; the plan
   itself refuses to decide on a non-finite EFFTIME_SPEC (FAIL).  A whole line whose
   SURVEY is not a DESI survey (e.g. desispec's default ``unknown``) cannot be loaded
   (``target.id`` encodes the survey): that tile FAILs, without damaging the file.
5. An UPDATE redoes fiberassign/potential/target/photometry (``full``) when the
   fiberassign file changed or a field of the line that feeds those rows changed
   (:data:`FULL_LINE_FIELDS`): the rows an UPDATE keeps depend on nothing that moved.

Decision 12 guards the deletes (:func:`guard_deletes`): a damaged tiles file (any line
that cannot be used) deletes nothing, its would-be deletes are SKIPped ("deletes
suspended"); ``--no-delete`` refuses every delete; a run is refused as a mass delete only
when its deletes are more than ``max_delete_count`` AND at least ``max_delete_fraction``
of the loaded tiles.
"""
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from specprod_db.errors import MassDeleteRefused
from specprod_db.ids import SURVEYID
from specprod_db.log import get_logger

INSERT, UPDATE, DELETE, REFRESH, SKIP, UNCHANGED, FAIL = (
    "INSERT", "UPDATE", "DELETE", "REFRESH", "SKIP", "UNCHANGED", "FAIL")

_OLDEST = datetime.min.replace(tzinfo=timezone.utc)

#: The fields of a tiles-file line that feed the rows an UPDATE without ``full`` keeps
#: (``target.survey``, ``target.program`` and ``target.id``, which encodes the survey:
#: :func:`specprod_db.load.tasks.extract_tile` passes SURVEY and PROGRAM to the targetphot
#: step).  Any other field feeds only the tables every UPDATE rewrites (tile, exposure,
#: frame, ztile and its afterburners).
FULL_LINE_FIELDS = ("SURVEY", "PROGRAM")

#: tile_state statuses of a tile whose last load failed.
_FAILED = ("failed", "internal_error")


@dataclass
class TileAction:
    tileid: int
    action: str
    reason: str
    line: dict[str, Any] = field(default_factory=dict)
    #: redo fiberassign/potential/target/photometry (new tile or changed fiberassign)
    full: bool = True
    #: fingerprints computed by the planner (recorded in tile_state after loading)
    state: dict[str, Any] = field(default_factory=dict)


#: The shape of an ``UPDATED`` value: desispec writes ``%Y-%m-%dT%H:%M:%S%z``
#: (datamodel.md §1.6); fractional seconds (1-6 digits), an offset with a colon or
#: ``Z``, and no offset (read as UTC) are read too.  Zero-padded fields only.
_UPDATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?([+-]\d\d:?\d\d|Z)?")


def parse_updated(value: str) -> datetime:
    """``UPDATED`` as an aware datetime (no offset: UTC); empty is the oldest possible.

    The one parser of ``UPDATED``: the tiles-file reader checks every line with it and
    :func:`winning_lines` orders lines with it.  Raises :class:`ValueError` for a value
    that is not a timestamp (a wrong shape, seven fraction digits, 2024-02-30, hour 99,
    an offset of 24 hours or more): a bad line, never "the oldest".
    """
    value = (value or "").strip()
    if not value:
        return _OLDEST
    if _UPDATED.fullmatch(value):
        for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S",
                    "%Y-%m-%dT%H:%M:%S.%f"):
            try:
                dt = datetime.strptime(value, fmt)
            except ValueError:
                continue
            return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
    raise ValueError(f"UPDATED {value!r} not a timestamp")


def parse_night(value: Any) -> int:
    """``LASTNIGHT`` as an int: a real calendar night written ``YYYYMMDD`` (8 digits,
    e.g. 20241031; the night names the cumulative redrock directory).  Raises
    :class:`ValueError` for anything else (20240230, 2024103, 0, -1)."""
    text = str(value).strip()
    if not re.fullmatch(r"\d{8}", text):
        raise ValueError(f"LASTNIGHT {text!r} not a night YYYYMMDD")
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise ValueError(f"LASTNIGHT {text!r} not a calendar date") from None
    return int(text)


def holds_rows(old: dict | None) -> bool:
    """Whether the tile of ``tile_state`` row ``old`` holds rows in the tables: it was
    loaded, or a later load of it failed and kept the older rows (``in_tile_table``:
    its ``tile`` row exists, :func:`specprod_db.db.lock.read_state`)."""
    return old is not None and (old.get("status") == "loaded"
                                or bool(old.get("in_tile_table")))


def _failed(old: Optional[Mapping[str, Any]]) -> bool:
    return old is not None and old.get("status") in _FAILED


def _value(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str):
        return v.strip()
    return v


def line_dict(table: np.ndarray, i: int) -> dict[str, Any]:
    """Row ``i`` of the tiles table as a plain dict (upper-case keys)."""
    return {name: _value(table[name][i]) for name in table.dtype.names or ()}


def winning_lines(table: np.ndarray) -> dict[int, int]:
    """TILEID -> index of its winning line; logs each duplicated TILEID once.

    UPDATED is read by :func:`parse_updated` (a value it refuses raises ValueError: the
    reader sets such lines aside as bad, so they never reach here with one)."""
    log = get_logger()
    tileids = np.asarray(table["TILEID"])
    updated = table["UPDATED"] if "UPDATED" in (table.dtype.names or ()) \
        else [""] * len(tileids)
    best: dict[int, tuple[datetime, int]] = {}
    count: dict[int, int] = {}
    for i, (tid, upd) in enumerate(zip(tileids.tolist(), updated)):
        key = parse_updated(_value(upd))
        count[tid] = count.get(tid, 0) + 1
        if tid not in best or key >= best[tid][0]:
            best[tid] = (key, i)
    for tid, n in count.items():
        if n > 1:
            log.warning("tile %d has %d lines in the tiles file; using line %d (latest "
                        "UPDATED, then last line)", tid, n, best[tid][1] + 2)
    return {tid: i for tid, (_, i) in best.items()}


def tile_hash(line: Mapping[str, Any]) -> str:
    """Fingerprint of a tiles-file line without ``UPDATED`` (what counts as a change)."""
    clean = {k: (repr(float(v)) if isinstance(v, float) else v)
             for k, v in line.items() if k != "UPDATED"}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()


def _changed_columns(old_line: Optional[Mapping[str, Any]],
                     line: Mapping[str, Any]) -> list[str]:
    if not old_line:
        return []
    return sorted(k for k in line if k != "UPDATED" and old_line.get(k) != line.get(k))


def make_plan(table: np.ndarray, problems: Mapping[int, str],
              state: Mapping[int, dict[str, Any]],
              fingerprints: Callable[[int, dict[str, Any], Optional[dict[str, Any]]],
                                     dict[str, Any]],
              tiles: Optional[Iterable[int]] = None, no_delete: bool = False,
              max_delete_fraction: float = 0.1, allow_mass_delete: bool = False,
              max_delete_count: int = 3, bad_lines: int = 0) -> list[TileAction]:
    """Diff the tiles file against the load state.

    Parameters
    ----------
    table : structured array
        The tiles file (every line; upper-case columns).
    problems : dict
        TILEID -> message for lines that cannot be used (malformed fields): FAIL.
    state : dict
        TILEID -> tile_state row (dict) for tiles the database knows.
    fingerprints : callable
        ``fingerprints(tileid, line, old_state) -> dict`` of input fingerprints:
        ``exposures_hash``, ``redrock_fingerprint``, ``fiberassign_fingerprint``.
    tiles : iterable of int, optional
        Restrict the plan to these TILEIDs.
    no_delete, max_delete_fraction, max_delete_count, allow_mass_delete
        The delete guards (:func:`guard_deletes`).
    bad_lines : int
        Lines of the tiles file that could not be used (``read_tiles_file``): when > 0
        the file is damaged and no tile is deleted.
    """
    log = get_logger()
    # lines without a readable TILEID belong to no tile (read_tiles_file logged them)
    problems = {k: v for k, v in problems.items() if k is not None}
    winners = winning_lines(table) if len(table) else {}
    wanted = None if tiles is None else set(int(t) for t in tiles)
    actions = []
    for tid in sorted(set(winners) | set(state) | set(problems)):
        if wanted is not None and tid not in wanted:
            continue
        old = state.get(tid)
        holds = holds_rows(old)
        loaded = old is not None and old.get("status") == "loaded"
        if tid in problems:
            actions.append(TileAction(tid, FAIL, problems[tid]))
            continue
        if tid not in winners:
            gone = _gone(tid, old, holds, "no longer in the tiles file")
            if gone:
                actions.append(gone)
            continue
        line = line_dict(table, winners[tid])
        efftime: Any = line.get("EFFTIME_SPEC")
        if not _finite(efftime):
            actions.append(TileAction(tid, FAIL, f"tile {tid}: EFFTIME_SPEC {efftime!r} "
                                      "not a finite number", line))
            continue
        if efftime <= 0:
            gone = _gone(tid, old, holds, f"EFFTIME_SPEC = {efftime}", line)
            if gone is None:
                log.info("tile %d skipped: EFFTIME_SPEC = %s (no usable exposures)", tid,
                         efftime)
                gone = TileAction(tid, SKIP, f"EFFTIME_SPEC = {efftime}", line)
            actions.append(gone)
            continue
        survey = line.get("SURVEY")
        if survey not in SURVEYID:
            actions.append(TileAction(tid, FAIL, (
                f"tile {tid}: SURVEY {survey!r} is not a DESI survey "
                f"({', '.join(SURVEYID)}): its target ids cannot be made"), line))
            continue
        fp = fingerprints(tid, line, old)
        fp["tile_hash"] = tile_hash(line)
        fp["updated"] = line.get("UPDATED", "")
        fp["lastnight"] = line.get("LASTNIGHT")
        if old is None or old.get("status") == "deleted":
            actions.append(TileAction(tid, INSERT, "new tile", line, True, fp))
            continue
        if not loaded:
            actions.append(TileAction(tid, INSERT if not old.get("in_tile_table") else UPDATE,
                                      f"retry after {old.get('status')}: "
                                      f"{(old.get('error') or '')[:80]}", line, True, fp))
            continue
        reasons = []
        full = False
        if fp["tile_hash"] != old.get("tile_hash"):
            old_line = json.loads(old.get("line") or "{}")
            cols = _changed_columns(old_line, line)
            reasons.append("changed: " + (", ".join(cols) if cols else "tiles-file line"))
            # the rows a partial UPDATE keeps must not depend on a field that moved; an
            # unknown old line (older versions) may differ anywhere
            full = not old_line or any(c in FULL_LINE_FIELDS for c in cols)
        if fp.get("exposures_hash") != old.get("exposures_hash"):
            reasons.append("exposures changed")
        if fp.get("redrock_fingerprint") != old.get("redrock_fingerprint"):
            reasons.append("redrock files changed")
        if fp.get("fiberassign_fingerprint") != old.get("fiberassign_fingerprint"):
            full = True
            reasons.append("fiberassign file changed")
        if reasons:
            actions.append(TileAction(tid, UPDATE, "; ".join(reasons), line, full, fp))
        elif fp["updated"] != (old.get("updated") or ""):
            actions.append(TileAction(tid, REFRESH, "only UPDATED moved", line, False, fp))
        else:
            actions.append(TileAction(tid, UNCHANGED, "", line, False, fp))
    return guard_deletes(actions, state, no_delete, max_delete_fraction, allow_mass_delete,
                         max_count=max_delete_count, bad_lines=bad_lines)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _gone(tid: int, old: Optional[Mapping[str, Any]], holds: bool, reason: str,
          line: Optional[dict[str, Any]] = None) -> Optional[TileAction]:
    """The DELETE of a tile that its winning line withdraws or that left the file: one
    that holds rows (whatever its status), or a failed one holding none (nothing to
    delete; it is marked ``deleted``); None when there is nothing to do."""
    if holds:
        return TileAction(tid, DELETE, reason, line or {})
    if old is not None and _failed(old):
        return TileAction(tid, DELETE, f"{reason} (after {old.get('status')}; holds no "
                          "rows: marked gone)", line or {})
    return None


def absent_tiles(tiles: Optional[Iterable[int]],
                 actions: Iterable[TileAction]) -> list[int]:
    """The TILEIDs of ``tiles`` (``--tiles``) the plan has no action for: neither the
    tiles file nor the database knows them (or only as deleted)."""
    if tiles is None:
        return []
    planned = {a.tileid for a in actions}
    return sorted(set(int(t) for t in tiles) - planned)


def damaged_reason(bad_lines: int) -> str:
    """The SKIP reason of a delete suspended because the tiles file is damaged."""
    return f"tiles file damaged ({bad_lines} bad lines): deletes suspended"


def is_mass_delete(deletes: int, loaded: int, max_fraction: float, max_count: int) -> bool:
    """True when ``deletes`` > ``max_count`` and ``deletes`` >= ``max_fraction`` x
    ``loaded`` (exact arithmetic: 100 of 1000 at 0.1 is a mass delete, 99 is not)."""
    share = Fraction(str(max_fraction)) * loaded
    return deletes > max_count and deletes >= share


def guard_deletes(actions: list[TileAction], state: Mapping[int, dict[str, Any]],
                  no_delete: bool, max_fraction: float, allow_mass: bool,
                  max_count: int = 3, bad_lines: int = 0) -> list[TileAction]:
    """Apply the delete guards (decision 12) to the planned DELETEs, in this order.

    1. ``bad_lines > 0`` (a damaged tiles file): every DELETE becomes SKIP with the
       reason :func:`damaged_reason`; INSERT/UPDATE of the well-formed lines go on.
    2. ``no_delete``: every DELETE becomes SKIP ("delete refused (--no-delete)").
    3. Unless ``allow_mass``, :class:`MassDeleteRefused` when the run would delete more
       than ``max_count`` tiles AND at least ``max_fraction`` of the loaded tiles
       (:func:`is_mass_delete`).  Loaded tiles are those holding rows
       (:func:`holds_rows`); a failed tile marked gone deletes no row and counts as no
       delete here.
    """
    log = get_logger()
    deletes = [a for a in actions if a.action == DELETE]
    loaded = sum(1 for s in state.values() if holds_rows(s))
    # marking a failed tile gone deletes no row: not part of a mass delete
    removing = [a for a in deletes if holds_rows(state.get(a.tileid))]
    if deletes and bad_lines:
        reason = damaged_reason(bad_lines)
        for a in deletes:
            log.warning("tile %d not deleted (%s): %s", a.tileid, a.reason, reason)
            a.action, a.reason = SKIP, reason
        log.warning("tiles file damaged (%d bad lines): %d delete(s) suspended; nothing "
                    "deleted until the file is whole", bad_lines, len(deletes))
        return actions
    for a in deletes:
        log.warning("DELETE tile %d: %s", a.tileid, a.reason)
    if deletes and no_delete:
        for a in deletes:
            a.action, a.reason = SKIP, f"delete refused (--no-delete): {a.reason}"
        log.warning("--no-delete: %d tile(s) would be deleted; nothing deleted", len(deletes))
    elif removing and is_mass_delete(len(removing), loaded, max_fraction, max_count) \
            and not allow_mass:
        raise MassDeleteRefused(
            f"{len(removing)} of {loaded} loaded tiles would be deleted: more than "
            f"--max-delete-count {max_count} and at least --max-delete-fraction "
            f"{max_fraction:g} of the loaded tiles; rerun with --allow-mass-delete if "
            "this is intended: "
            + ", ".join(str(a.tileid) for a in removing[:20]))
    return actions


def summary(actions: Iterable[TileAction]) -> dict[str, int]:
    """Action -> number of tiles."""
    counts: dict[str, int] = {}
    for a in actions:
        counts[a.action] = counts.get(a.action, 0) + 1
    return counts


def format_plan(actions: Sequence[TileAction], show_unchanged: bool = False) -> str:
    """The plan as text: one line per tile (action, reason)."""
    lines = [f"{'TILEID':>8}  {'ACTION':<9}  REASON"]
    for a in actions:
        if a.action == UNCHANGED and not show_unchanged:
            continue
        extra = "" if a.action != UPDATE else (" [full reload]" if a.full else "")
        lines.append(f"{a.tileid:>8}  {a.action:<9}  {a.reason}{extra}")
    counts = summary(actions)
    lines.append("total: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
