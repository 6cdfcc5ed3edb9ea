"""Value-added catalogs (VACs) and afterburners: any FITS binary table as ``S.vac_NAME``.

``specprod-db vac load --schema S --name NAME FILE.fits[:HDU] ...`` (doc/vac.md):

1. **convert** (one task per file, :func:`~.convert.convert_file`, on the worker ranks over MPI):
   the HDU's header decides every column's PostgreSQL type (:func:`~.columns.describe_hdu`, the
   table in doc/vac.md); the raw big-endian rows are converted with numpy (unsigned and
   signed-byte conventions, scaling, logical, blank-padded strings) into an HDF5 stage
   file (:class:`~specprod_db.stage.StageFile`, array ``aux/vac``) and the task returns
   the file's column description;
2. **check** (rank 0): every file has the same columns; no key appears twice (the file,
   column and value named); nothing is written before this;
3. **build** (rank 0, one transaction): ``S.vac_NAME__new`` is created, every stage file
   COPYed into it by the binary encoder of :mod:`specprod_db.db.pgcopy` (a
   :class:`~.columns.VacTable` plays ``schema.Table``), then its primary key, its foreign keys
   (checked first: an unmatched key is named with its file), its q3c index, its
   description (``COMMENT ON TABLE``, JSON) and ANALYZE;
4. **swap** (rank 0, one short transaction): the old ``S.vac_NAME`` is dropped and the
   new one renamed, with its constraints and indexes, and given the old one's readers.

The build is committed before the swap on purpose: the swap is then catalog changes
only, holds the old table's lock for milliseconds, and can wait for readers and retry
(:data:`~.catalog.SWAP_ATTEMPT`) without redoing the COPY.  A reader's statement sees the old table
or the new one, whole: a statement queued behind the swap resolves the name again once
it gets its lock and reads the new table.  (Like any DDL, the swap is not MVCC-safe for a
REPEATABLE READ transaction whose snapshot predates the build: it would find the new
table empty.)  A failure at any step leaves the old table as it was and no ``__new``
table; a crash between build and swap leaves one, which the next load of that VAC drops.

The description of each VAC is its table comment, so it moves with the table through
the swap and disappears with it: no bookkeeping table can disagree with the tables.

The modules, by what they own:

- :mod:`.columns`: FITS column -> PostgreSQL type, :class:`~.columns.VacColumn`,
  :class:`~.columns.VacTable` (the table description the COPY encoder reads);
- :mod:`.convert`: the worker task, a FITS file -> a stage file, and reading it back;
- :mod:`.check`: rank 0's checks (the files' columns agree, the key, no key twice);
- :mod:`.loader`: :func:`~.loader.load` (rank 0 of the load) and :func:`~.loader.build`;
- :mod:`.catalog`: the VAC tables (names, the table-comment description, the per-VAC
  lock), :func:`~.catalog.swap`, :func:`~.catalog.describe_all`, :func:`~.catalog.drop`.

The names below are this package's interface (``specprod-db vac``, the tests); they are
re-exports, so a test changing a setting patches its module (``vac.catalog.SWAP_ATTEMPT``).
"""
from specprod_db.vac.catalog import (BUILDING, LOCK_NAMESPACE, MARKER, MAX_NAME,
                                     NAME_PATTERN, PREFIX, REFERENCES, SWAP_ATTEMPT,
                                     check_name, check_schema, describe_all, drop,
                                     drop_building, swap, table_name)
from specprod_db.vac.check import Keys, choose_key, merge_columns
from specprod_db.vac.columns import VacColumn, VacTable, describe_column, describe_hdu
from specprod_db.vac.convert import (HANDLERS, ConvertTask, convert_file, fingerprint,
                                     parse_source, read_fits, source_label)
from specprod_db.vac.loader import Q3C_PAIRS, READ_ROWS, Options, build, foreign_keys, load

#: The former name of :func:`check_schema`, until ``specprod-db vac list``
#: (commands/vac.py) uses the new one.
_check_schema = check_schema

__all__ = ["BUILDING", "HANDLERS", "LOCK_NAMESPACE", "MARKER", "MAX_NAME", "NAME_PATTERN",
           "PREFIX", "Q3C_PAIRS", "READ_ROWS", "REFERENCES", "SWAP_ATTEMPT", "ConvertTask",
           "Keys", "Options", "VacColumn", "VacTable", "build", "check_name", "choose_key",
           "check_schema", "convert_file", "describe_all", "describe_column", "describe_hdu", "drop",
           "drop_building", "fingerprint", "foreign_keys", "load", "merge_columns",
           "parse_source", "read_fits", "source_label", "swap", "table_name"]
