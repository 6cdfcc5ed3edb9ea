"""The long run of the differential fuzzer of mornings (``make fuzz SEEDS=N``).

Runs N seeds of ``--steps`` random mornings each (tests/morningfuzz.py: the generator,
the loads, the rule of comparison), alternating 1 and 3 ranks, and writes
``bench/results/fuzz.md`` (and ``fuzz.json``): how many mornings ran, how many diverged,
the seeds, what each divergence was, how often each kind of change was drawn, and the
exit statuses and held-back tiles seen. A seed stops at its first divergence (later
mornings would repeat it). ``--shrink`` replays a diverging seed's mornings with fewer
changes until none can go (the smallest script is printed: add it to
``tests/test_fuzz.py`` KNOWN).

    .venv/bin/python bench/fuzz.py --seeds 40            # seeds 1..40
    .venv/bin/python bench/fuzz.py --seed 17 --steps 30  # one seed, longer
    .venv/bin/python bench/fuzz.py --seeds 5 --pythonpath /tmp/old/py   # older code

Server: ``SPECPROD_DB_TEST_DSN`` if set, else the private cluster of the tests.
"""
import argparse
import collections
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import morningfuzz as F  # noqa: E402


def server():
    dsn = os.environ.get("SPECPROD_DB_TEST_DSN", "").strip()
    if dsn:
        return dsn
    from specprod_db.devdb import pgcluster
    return pgcluster.ensure_server()


def mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.access(local, os.X_OK) else "mpiexec"


def commit():
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "py"],
                               capture_output=True, text=True).stdout.strip()
        return head + (" (py/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def spec_kind(spec):
    k = spec["kind"]
    if k == "line":
        changed = sorted(spec.get("set") or {})
        if not changed:
            return "line: UPDATED only" if spec.get("updated") else "line: exact duplicate"
        return "line: " + ",".join(changed)
    if k in ("redrock", "exposure", "fiberassign"):
        return f"{k}: {spec['how']}"
    if k == "truncate":
        f = spec["file"]
        what = next((w for w in ("redrock", "emline", "fiberassign", "exposures", "tractor",
                                 "targets") if w in os.path.basename(f)), "file")
        return f"truncate: {what}"
    if k == "bad_value":
        return f"bad value: {spec['column']}"
    return k


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=None, help="run seeds FIRST..FIRST+N-1")
    ap.add_argument("--first", type=int, default=1, help="first seed (default 1)")
    ap.add_argument("--seed", type=int, action="append", default=[],
                    help="run this seed (repeatable)")
    ap.add_argument("--steps", type=int, default=12, help="mornings per seed (default 12)")
    ap.add_argument("--ranks", default="1,3,1,3,4w2",
                    help="ranks of the morning loads, cycled over the seeds; NwK: N ranks "
                         "with --writers K (default 1,3,1,3,4w2)")
    ap.add_argument("--workdir", default="/tmp/specprod-fuzz")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "fuzz.md"))
    ap.add_argument("--shrink", action="store_true", help="shrink each divergence")
    ap.add_argument("--pythonpath", default=None,
                    help="PYTHONPATH of the loads (another checkout's py/)")
    ap.add_argument("--keep-going", action="store_true",
                    help="do not stop a seed at its first divergence")
    args = ap.parse_args(argv)
    seeds = list(args.seed)
    if args.seeds:
        seeds += list(range(args.first, args.first + args.seeds))
    if not seeds:
        seeds = list(range(1, 11))
    ranks = []
    for r in args.ranks.split(","):
        n, _, k = r.partition("w")
        ranks.append((int(n), ("--writers", k) if k else ()))
    env = {"PYTHONPATH": args.pythonpath} if args.pythonpath else None
    dsn, mpi = server(), mpiexec()
    log = lambda s: print(s, file=sys.stderr, flush=True)   # noqa: E731
    t0 = time.time()
    started = datetime.datetime.now(datetime.timezone.utc)
    results, shrunk = [], {}
    for i, seed in enumerate(seeds):
        r, load_args = ranks[i % len(ranks)]
        res = F.run_seed(seed, args.steps, r, dsn, mpi, args.workdir, log=log, env=env,
                         stop_at_divergence=not args.keep_going, load_args=load_args)
        results.append(res)
        if res.diverged:
            log(res.report())
            if args.shrink:
                best, sres = F.shrink(seed, res.script(), r, dsn, mpi, args.workdir,
                                      log=log, env=env, load_args=load_args)
                shrunk[seed] = (best, sres)
                log("shrunk:\n" + sres.report() + "\nscript: " + json.dumps(best))
    elapsed = time.time() - t0
    write_report(args, results, shrunk, elapsed, started)
    total = sum(len(r.mornings) for r in results)
    bad = sum(len(r.diverged) for r in results)
    print(f"{total} mornings over {len(results)} seeds, {bad} diverged "
          f"({elapsed / 60:.1f} min); report {args.out}")
    return 1 if bad else 0


def write_report(args, results, shrunk, elapsed, started):
    mornings = [m for r in results for m in r.mornings]
    kinds = collections.Counter(spec_kind(s) for m in mornings for s, _ in m.specs)
    noops = sum(1 for m in mornings for _, w in m.specs if w.startswith("no-op"))
    errors = [w for m in mornings for _, w in m.specs if "fuzzer error" in w]
    exits = collections.Counter((m.rc_a, m.rc_b) for m in mornings)
    held = collections.Counter(o for m in mornings for o, _, _ in m.held_a.values())
    notes = [(r.seed, m.step, n) for r in results for m in r.mornings for n in m.notes]
    div = [(r, m) for r in results for m in r.diverged]
    lines = [
        "# Differential fuzzer of mornings: last long run", "",
        f"`make fuzz SEEDS={len(results)}` (bench/fuzz.py; tests/morningfuzz.py has the "
        f"generator and the rule of comparison). Started {started:%Y-%m-%d %H:%M} UTC, "
        f"code {commit()}" + (f", loads from {args.pythonpath}" if args.pythonpath else "")
        + f", {elapsed / 60:.1f} min.", "",
        "| | |", "|---|---|",
        f"| seeds | {len(results)} ({', '.join(str(r.seed) for r in results)}) |",
        f"| mornings run | {len(mornings)} (the first load of each seed included; up to "
        f"{args.steps} random mornings per seed) |",
        f"| mornings diverged | {len(div)} |",
        f"| seeds diverged | {', '.join(str(r.seed) for r in results if r.diverged) or 'none'} |",
        f"| ranks | {args.ranks} (cycled over the seeds) |",
        f"| changes applied | {sum(len(m.specs) for m in mornings)} ({noops} no-ops) |",
        f"| fuzzer errors | {len(errors)} |",
        f"| mornings seconds (mean) | {sum(m.seconds for m in mornings) / max(len(mornings), 1):.1f} |",
        "", "## Divergences", ""]
    if not div:
        lines.append("None.")
    for r, m in div:
        lines.append(f"* seed {r.seed}, morning {m.step} ({r.ranks} rank(s)"
                     f"{' ' + ' '.join(r.load_args) if r.load_args else ''}):")
        for f in m.findings:
            first = f.splitlines()
            lines.append("  " + first[0])
            lines += ["      " + x for x in first[1:8]]
        if r.seed in shrunk:
            lines.append("  shrunk script: `" + json.dumps(shrunk[r.seed][0]) + "`")
        else:
            lines.append("  changes of that morning: `"
                         + json.dumps([s for s, _ in m.specs]) + "`")
    lines += ["", "## Kinds of change drawn", "", "| kind | count |", "|---|---|"]
    lines += [f"| {k} | {n} |" for k, n in sorted(kinds.items())]
    lines += ["", "## Exit statuses (incremental A, fresh B; B not run after a refusal)", "",
              "| A | B | mornings |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {n} |" for (a, b), n in sorted(exits.items(), key=str)]
    lines += ["", "## Tiles held back by the incremental runs", "",
              "| outcome | tile-mornings |", "|---|---|"]
    lines += [f"| {o} | {n} |" for o, n in sorted(held.items())] or ["| none | 0 |"]
    lines += ["", f"## Notes ({len(notes)})", "",
              "Tiles the incremental run held back that a fresh load of the same tree "
              "loaded (allowed by the invariant; each worth a look):", ""]
    lines += [f"* seed {s}, morning {st}: {n}" for s, st, n in notes[:40]] or ["None."]
    if errors:
        lines += ["", "## Fuzzer errors", ""] + [f"* {e}" for e in errors[:20]]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    js = os.path.splitext(args.out)[0] + ".json"
    with open(js, "w") as f:
        json.dump(dict(started=started.isoformat(), seconds=elapsed, commit=commit(),
                       steps=args.steps, ranks=args.ranks,
                       seeds=[dict(seed=r.seed, ranks=r.ranks, load_args=r.load_args,
                                   mornings=len(r.mornings),
                                   diverged=[m.step for m in r.diverged],
                                   findings=[f for m in r.diverged for f in m.findings],
                                   script=r.script() if r.diverged else None)
                              for r in results]), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
