#!/bin/bash
# The daily job at NERSC: follow tiles-daily into schema "daily".
#   sbatch slurm/daily.sh            (or a scrontab line running it every morning)
#SBATCH --qos=regular
#SBATCH --constraint=cpu
#SBATCH --nodes=1
#SBATCH --time=01:00:00
#SBATCH --job-name=specprod-db-daily
#SBATCH --output=specprod-db-daily-%j.log
#SBATCH --licenses=cfs,scratch
set -euo pipefail
# desiconda provides mpi4py built against Cray MPICH, numpy, astropy, fitsio, h5py,
# psycopg2 and desiutil; specprod-db itself is installed in it or on PYTHONPATH.
source /global/common/software/desi/desi_environment.sh main
export SPECPROD=daily
export SPECPROD_DB_STAGE_DIR=${SCRATCH}/specprod-db-stage
# The database is reached through ~/.pgpass and PGHOST/PGDATABASE/PGUSER (or --db).
srun -n 32 specprod-db load --schema daily "$@"
