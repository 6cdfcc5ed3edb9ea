"""Reading DESI's files into rows: tiles and exposures files, fiberassign, targeting
catalogs, Legacy Surveys photometry, redrock and afterburner files, HEALPix redshifts.

Pure functions of files and numpy arrays, run on worker ranks: nothing here imports
psycopg2 or mpi4py (``tests/test_layout.py`` checks it).
"""
