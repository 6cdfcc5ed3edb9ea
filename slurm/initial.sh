#!/bin/bash
# The initial (monolithic) load of a whole production on many nodes.
#   SPECPROD=loa sbatch slurm/initial.sh      (schema: $SCHEMA, default $SPECPROD)
#SBATCH --qos=regular
#SBATCH --constraint=cpu
#SBATCH --nodes=8
#SBATCH --time=08:00:00
#SBATCH --job-name=specprod-db-initial
#SBATCH --output=specprod-db-initial-%j.log
#SBATCH --licenses=cfs,scratch
set -euo pipefail
source /global/common/software/desi/desi_environment.sh main
export SPECPROD=${SPECPROD:-daily}
export SPECPROD_DB_STAGE_DIR=${SCRATCH}/specprod-db-stage
# Create the schema first (idempotent), on one task:
srun -n 1 specprod-db init --schema "${SCHEMA:-$SPECPROD}"
# One writer (rank 0) and 255 extraction ranks; a rerun after a failure reuses the
# complete stage files and loads only what is missing.
srun -N 8 -n 256 specprod-db load --initial --schema "${SCHEMA:-$SPECPROD}" "$@"
