"""PROGRAM from FAFLAVOR equals desispec's ``faflavor2program`` (desispec#2251 patch)."""
import numpy as np
import pytest

from specprod_db.extract import tile
from specprod_db.extract.faflavor import faflavor2program, program_of

FLAVORS = [
    "cmxelg", "cmxlrgqso", "sv1elg", "sv1elgqso", "sv1lrgqso", "sv1lrgqso2", "sv1bgsmws",
    "sv1backup1", "sv1unwisebluebright", "sv1unwisebluefaint", "sv1ssv", "sv1scndbright",
    "sv2dark", "sv2bright", "sv2backup", "sv3dark", "sv3bright", "sv3backup", "maindark",
    "mainbright", "mainbackup", "maindark1b", "mainbright1b", "specialm31", "specialodin",
    "specialother", "cmxm33", "dithprec", "", "unknown", "dark", "bright1b", "xbackup",
] + [f"specialtertiary{i}" for i in range(0, 45)]


def test_equals_desispec():
    meta = pytest.importorskip("desispec.io.meta")
    want = meta.faflavor2program(np.array(FLAVORS))
    assert faflavor2program(np.array(FLAVORS)).tolist() == want.tolist()
    assert [program_of(f) for f in FLAVORS] == want.tolist()
    assert faflavor2program(b"mainbright") == meta.faflavor2program("mainbright")


def test_empty_program_patched_empty_faflavor_bad(tmp_path):
    """A line with an empty PROGRAM loads with faflavor2program(FAFLAVOR) (it was
    loaded as ''); with FAFLAVOR empty too, the line is bad (nothing to patch from)."""
    names = list(tile.TILES_COLUMNS)
    lines = [",".join(names)]
    for tid, program, faflavor in ((1000, "", "sv1elgqso"), (1001, "", ""),
                                   (1002, "dark", "maindark")):
        row = {n: "1" for n in names}
        row.update(TILEID=str(tid), SURVEY="main", PROGRAM=program, FAPRGRM="dark",
                   FAFLAVOR=faflavor, OBSSTATUS="obsend", GOALTYPE="dark",
                   LASTNIGHT="20241030", EFFTIME_SPEC="900.0",
                   UPDATED="2024-10-31T08:00:00+00:00")
        lines.append(",".join(row[n] for n in names))
    path = tmp_path / "tiles.csv"
    path.write_text("\n".join(lines) + "\n")
    table, problems, bad = tile.read_tiles_file(str(path))
    assert bad == 1 and set(problems) == {1001} and "FAFLAVOR missing" in problems[1001]
    got = dict(zip(table["TILEID"].tolist(), table["PROGRAM"].tolist()))
    assert got[1000] == "dark" and got[1002] == "dark"
