"""The mock productions the benchmarks load: written once under the work directory and
reused while the mock code that wrote them is unchanged (``bench/run.py`` and
``bench/scale.py`` both use these). specprod_db.mock is imported when first needed, so
the benchmarks' ``--help`` stays quick."""
import hashlib
import json
import os
import shutil
import time


def _print(msg=""):
    print(msg, flush=True)


def mock_env(outdir):
    """The process environment plus the mock production's DESI variables."""
    from specprod_db.mock import environment
    return dict(os.environ, **environment(outdir))


def mock_digest():
    """SHA-256 (12 hex digits) of the mock writer's source: a mock tree written by other
    mock code (new files, new columns) is written again, not reused."""
    import specprod_db.mock
    h = hashlib.sha256()
    d = os.path.dirname(os.path.abspath(specprod_db.mock.__file__))
    for name in sorted(os.listdir(d)):
        if name.endswith(".py"):
            with open(os.path.join(d, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:12]


def mock_is_current(done):
    """The tree's bench-complete.json exists and was written by the current mock code."""
    try:
        with open(done) as f:
            return json.load(f).get("mock_digest") == mock_digest()
    except (OSError, ValueError):
        return False


def ensure_mock(workdir, tiles, seed, small=False, fibers=None, log=_print):
    """The mock production of ``tiles`` tiles under ``workdir``, written unless a current
    one is there: (its directory, seconds it took to write or None if reused)."""
    from specprod_db.mock import make_production
    kind = ("small-" if small else "") + (f"{fibers}fibres-" if fibers else "")
    outdir = os.path.join(workdir, f"mock-{kind}{tiles}tiles-seed{seed}")
    done = os.path.join(outdir, "bench-complete.json")
    if mock_is_current(done):
        log(f"mock production: reusing {outdir}")
        return outdir, None
    shutil.rmtree(outdir, ignore_errors=True)
    log(f"mock production: writing {tiles} {'small' if small else 'full-size'} tiles "
        f"to {outdir} ...")
    t = time.time()
    summary = make_production(outdir, tiles=tiles, seed=seed, small=small,
                              fibers_per_tile=fibers)
    elapsed = time.time() - t
    with open(done, "w") as f:
        json.dump({"seconds": elapsed, "tiles": len(summary["tiles"]),
                   "mock_digest": mock_digest()}, f)
    log(f"mock production: {elapsed:.0f} s")
    return outdir, elapsed
