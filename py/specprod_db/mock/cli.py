"""``specprod-db mock OUTDIR``: write or advance a mock DESI daily production."""
import sys
import time


def add_arguments(parser):
    parser.add_argument("outdir", metavar="OUTDIR", help="root of the mock tree (= $DESI_ROOT)")
    parser.add_argument("--advance", action="store_true",
                        help="move an existing tree to the next night")
    parser.add_argument("--withdraw", action="store_true",
                        help="with --advance: withdraw one tile (its exposures drop to EFFTIME_SPEC 0)")
    parser.add_argument("--tiles", type=int, default=None,
                        help="number of tiles of a new tree (default 30; 6 with --small)")
    parser.add_argument("--fibers-per-tile", type=int, default=None,
                        help="fibres per tile, multiple of 10 (default 5000; 150 with --small)")
    parser.add_argument("--nights", type=int, default=None,
                        help="nights of history in a new tree (default 3)")
    parser.add_argument("--radius", type=float, default=None,
                        help="tile radius in degrees (default 1.6; 0.3 with --small)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--small", action="store_true", help="a small tree for fast tests")
    parser.add_argument("--append-duplicates", action="store_true",
                        help="tiles-daily: append a new line per change instead of rewriting")
    parser.add_argument("--static", metavar="NAME", default=None,
                        help="write a static (named) production NAME instead of daily: "
                             "tiles-NAME.fits, exposures-NAME.fits, cumulative and HEALPix "
                             "redrock files (cannot be advanced)")
    parser.add_argument("--new-tiles", type=int, default=2,
                        help="with --advance: new tiles observed tonight (default 2)")
    parser.add_argument("--reobserve", type=int, default=2,
                        help="with --advance: existing tiles observed again (default 2)")


def run(args):
    from specprod_db.mock.production import advance_production, make_production
    t0 = time.time()
    if args.advance:
        try:
            s = advance_production(args.outdir, new_tiles=args.new_tiles,
                                   reobserve=args.reobserve, withdraw=args.withdraw)
        except ValueError as err:  # a static production
            print(f"specprod-db mock: {err}", file=sys.stderr)
            return 2
    else:
        s = make_production(args.outdir, tiles=args.tiles, seed=args.seed, small=args.small,
                            fibers_per_tile=args.fibers_per_tile, nights=args.nights,
                            radius=args.radius, append_duplicates=args.append_duplicates,
                            static=args.static)
    print(f"mock: {s['outdir']} night {s['night']}: {len(s['tiles'])} tiles, "
          f"new {s['new_tiles']}, changed {s['changed_tiles']}, withdrawn {s['withdrawn']} "
          f"({time.time() - t0:.1f} s)")
    print(f"source {s['outdir']}/env.sh to use it")
    return 0
