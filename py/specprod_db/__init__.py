"""specprod-db: keep the DESI spectroscopic production database in step with the data.

An MPI-parallel bulk loader: rank 0 plans from ``tiles-$SPECPROD``, worker ranks extract
each tile (targetphot, fiberassign, redshifts) and each brick (tractorphot) into HDF5 stage
files, and one writer rank binary-COPYs the staged rows into PostgreSQL.
"""
__version__ = "0.1.0"
