"""``specprod-db report``: a static HTML page with PNG plots.  One load of the small
production (module scope) with 60000's line damaged (it fails), then 1000's GOALTIME
changed (pending UPDATE); the page is made once through the CLI, its images checked
as PNGs, its tables against SQL, and the page opened in headless Chromium (installed
by ``make test``: etc/ensure-chromium.sh)."""
import os
import re
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser

import pytest

from conftest import query
from test_history import (copy_prod, drop_schema, edit_tiles, last_run_id, load_in_process,
                          new_schema)

from specprod_db import cli
from specprod_db.ops import report
from specprod_db.mock import environment

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def loaded(pg_dsn, small_production, tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    prod = copy_prod(small_production, base / "production")
    name = new_schema(pg_dsn)
    try:
        edit_tiles(prod, set_fields={60000: {"EFFTIME_SPEC": "lots"}})
        assert load_in_process(pg_dsn, name, prod, base / "stage") == 1  # 60000 failed
        edit_tiles(prod, set_fields={1000: {"GOALTIME": "1234.0"}})
        yield name, prod, base
    finally:
        drop_schema(pg_dsn, name)


def make_report(pg_dsn, name, prod, out, *options):
    """``specprod-db report`` in process, with the mock's DESI environment."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in environment(prod).items():
            mp.setenv(k, v)
        return cli.main(["report", "--schema", name, "--db", pg_dsn, "--out", str(out),
                         "-q", *options])


@pytest.fixture(scope="module")
def page(loaded, pg_dsn):
    name, prod, base = loaded
    out = base / "page"
    assert make_report(pg_dsn, name, prod, out) == 0
    return out


class Tables(HTMLParser):
    """``{table id: [[cell text, ...], ...]}`` (body rows), ``<img>`` attributes and the
    text of elements with an id."""

    def __init__(self, text):
        super().__init__()
        self.tables, self.images, self.ids = {}, [], {}
        self._table = self._row = self._cell = None
        self._open = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        if "id" in a and tag != "table":
            self.ids[a["id"]] = []
            self._open.append((tag, a["id"]))

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:  # header rows have no <td>
                self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        for _, i in self._open:
            self.ids[i].append(data)


def parse_page(out):
    with open(out / "index.html", encoding="utf-8") as f:
        return Tables(f.read())


def number(text):
    return int(text.replace(",", "").lstrip("~"))


def png_info(path):
    """(width, height, pixel bytes) of a PNG, read with zlib (checks the format)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    return width, height, zlib.decompress(idat)


# --- the files -------------------------------------------------------------------------

def test_images_are_valid_nonblank_pngs(page):
    doc = parse_page(page)
    assert [i["src"] for i in doc.images] == [report.SKY_PNG, report.NIGHTS_PNG,
                                               report.TIMINGS_PNG]
    for img in doc.images:
        path = page / img["src"]
        assert path.stat().st_size > 5000, path
        width, height, pixels = png_info(path)
        assert (width, height) == (int(img["width"]), int(img["height"])), img
        # drawn on: many distinct byte values, not a blank canvas
        assert len(set(pixels)) > 50, path
    assert not [p for p in os.listdir(page) if p.endswith(".tmp")]


def test_tables_hold_the_database_counts(page, loaded, pg_dsn):
    name = loaded[0]
    doc = parse_page(page)
    # rows per table: every table of the schema, exact counts (all under the limit)
    tables = {row[0]: number(row[1]) for row in doc.tables["tables"]}
    names = [r[0] for r in query(pg_dsn, "SELECT relname FROM pg_class c JOIN pg_namespace "
                                         "n ON n.oid = relnamespace WHERE nspname = %s AND "
                                         "relkind IN ('r', 'p')", (name,))]
    assert set(tables) == set(names)
    for t in names:
        assert tables[t] == query(pg_dsn, f'SELECT count(*) FROM "{name}"."{t}"')[0][0], t
    assert tables["tile"] == 4 and tables["ztile"] > 0
    # tiles by survey and program
    assert sorted((s, p, number(n)) for s, p, n in doc.tables["programs"]) == sorted(
        query(pg_dsn, f'SELECT survey, program, count(*)::int FROM "{name}".tile '
                      "GROUP BY 1, 2"))
    # the last run's tiles, as tile_history has them
    run = last_run_id(pg_dsn, name)
    assert [(int(t), a, o) for t, a, o, *_ in doc.tables["changed"]] == query(
        pg_dsn, f'SELECT tileid, action, outcome FROM "{name}".tile_history '
                "WHERE run_id = %s ORDER BY id", (run,))
    assert {int(r[0]) for r in doc.tables["changed"]} == {100, 1000, 1001, 40000, 60000}
    # failed: tile_state
    failed = doc.tables["failed"]
    assert [(int(r[0]), r[1]) for r in failed] == query(
        pg_dsn, f'SELECT tileid, status FROM "{name}".tile_state '
                "WHERE status IN ('failed', 'internal_error') ORDER BY tileid")
    assert failed[0][0] == "60000" and "EFFTIME_SPEC" in failed[0][5] and failed[0][4] == "no"
    # pending: the next load's plan
    pending = {int(r[0]): (r[1], r[2]) for r in doc.tables["pending"]}
    assert pending[1000] == ("UPDATE", "changed: GOALTIME") and pending[60000][0] == "FAIL"
    # runs: one, with its rows written and its stage timings
    [row] = doc.tables["runs"]
    (counts,) = query(pg_dsn, f'SELECT counts FROM "{name}".load_run WHERE id = %s',
                      (run,))[0]
    import json
    counts = json.loads(counts)
    assert int(row[0]) == run and row[3] == "failed" and int(row[5]) == 1
    assert number(row[4]) == sum(counts["tables"].values())
    assert len(row) == 6 + len(counts["timers"]) and all(float(x) >= 0 for x in row[6:])
    summary = "".join(doc.ids["summary"])
    assert summary == "4 tile(s) loaded, 1 failed, 2 pending"


def test_values_are_escaped(loaded, pg_dsn):
    from specprod_db.db.connect import connect
    conn = connect(pg_dsn)
    try:
        r = report.collect(conn, loaded[0])
    finally:
        conn.close()
    r["schema"] = "<i>s</i>"
    r["tiles"]["failed"][0]["error"] = '<script>alert("x")</script> & more'
    r["tiles"]["pending_error"] = "<b>nowhere</b>"
    text = report.render(r)
    assert "<script>" not in text and "<i>" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in text
    assert "&lt;b&gt;nowhere&lt;/b&gt;" in text  # pending is None without plan options


def test_tiles_file_unreachable(loaded, pg_dsn, tmp_path):
    name, prod, _ = loaded
    out = tmp_path / "page"
    assert make_report(pg_dsn, name, prod, out, "--tiles-file",
                       str(tmp_path / "nowhere.csv")) == 0
    doc = parse_page(out)
    said = "".join(doc.ids["pending-unknown"])
    assert said.startswith("unknown: ") and "nowhere.csv" in said
    assert "pending" not in doc.tables and len(doc.tables["tables"]) > 10
    assert "".join(doc.ids["summary"]).endswith("pending unknown")


def test_no_such_schema(pg_dsn, tmp_path, capsys):
    assert cli.main(["report", "--schema", "no_such_schema_xyz", "--db", pg_dsn,
                     "--out", str(tmp_path / "p")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_help_imports_no_matplotlib():
    code = ("import sys; from specprod_db import cli\n"
            "try:\n    cli.main(['report', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('matplotlib' in sys.modules, 'specprod_db.ops.report' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert "--out DIR" in out and out.strip().endswith("False False")


# --- in a browser ----------------------------------------------------------------------

def chromium(tmp_path, *args, timeout=120):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: headless Chromium is a test dependency; "
                    "`make test` installs it (etc/ensure-chromium.sh, as root; otherwise "
                    "it prints the apt-get command)", pytrace=False)
    profile = tmp_path / "chromium-profile"
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", *args]
    env = dict(os.environ, HOME=str(tmp_path))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{argv}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_page_renders_in_chromium(page, tmp_path):
    # each image loads: a wrapper page writes the images' natural sizes into the DOM
    imgs = "".join(f'<img id="i{k}" src="{(page / name).as_uri()}">'
                   for k, name in enumerate(report.IMAGES))
    wrapper = tmp_path / "wrapper.html"
    wrapper.write_text(
        f"<!DOCTYPE html><html><body>{imgs}<pre id=out>pending</pre><script>"
        "window.addEventListener('load', () => { document.getElementById('out')"
        ".textContent = Array.from(document.images).map(i => i.id + '=' + "
        "i.naturalWidth + 'x' + i.naturalHeight + ':' + i.complete).join(' '); });"
        "</script></body></html>")
    dom = chromium(tmp_path, "--run-all-compositor-stages-before-draw",
                   "--virtual-time-budget=5000", "--dump-dom", wrapper.as_uri())
    m = re.search(r'<pre id="out">([^<]*)</pre>', dom)
    assert m, dom[-2000:]
    sizes = dict(re.findall(r"(i\d)=(\d+x\d+):true", m.group(1)))
    assert len(sizes) == len(report.IMAGES), m.group(1)
    for k, name in enumerate(report.IMAGES):
        w, h = map(int, sizes[f"i{k}"].split("x"))
        assert w > 0 and h > 0, (name, w, h)
        assert (w, h) == png_info(page / name)[:2]

    # the page itself: a screenshot larger than that of a blank page
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    shots = {}
    for label, url in (("blank", blank.as_uri()), ("page", (page / "index.html").as_uri())):
        shot = tmp_path / f"{label}.png"
        chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000",
                 "--virtual-time-budget=5000", url)
        width, height, pixels = png_info(shot)
        assert (width, height) == (1280, 2000)
        shots[label] = (shot.stat().st_size, len(set(pixels)))
    assert shots["page"][0] > 10 * shots["blank"][0], shots
    assert shots["page"][1] > 50, shots
    keep = os.environ.get("SPECPROD_DB_KEEP_SCREENSHOT")
    if keep:  # to look at it
        import shutil
        shutil.copy(tmp_path / "page.png", keep)
