#!/bin/bash
# The daily job at NERSC: follow tiles-daily into schema "daily" (one node, 32 ranks).
#
#   sbatch slurm/daily.sh [LOAD OPTIONS]      # e.g. sbatch slurm/daily.sh --no-delete
#
# Every morning, from scrontab (scrontab -e; times are UTC; #SCRON lines replace the
# #SBATCH lines below, which scrontab does not read):
#
#   #SCRON -q regular
#   #SCRON -C cpu
#   #SCRON -A desi
#   #SCRON -N 1
#   #SCRON -t 01:00:00
#   #SCRON -J specprod-db-daily
#   #SCRON -o /global/homes/U/USER/specprod-db-logs/daily-%j.log
#   #SCRON --open-mode=append
#   30 15 * * * /path/to/specprod-db/slurm/daily.sh
#
# Exit status: that of `specprod-db load` (0 loaded, 1 some tile failed, 2 refused,
# 3 interrupted, 4 internal error; see slurm/README.md); 2 also when this script
# refuses to start (no database configured, a password in the environment, ...).
# Every setting below may be overridden by the caller's environment.
#SBATCH --qos=regular
#SBATCH --constraint=cpu
#SBATCH --account=desi
#SBATCH --nodes=1
#SBATCH --time=01:00:00
#SBATCH --job-name=specprod-db-daily
#SBATCH --output=specprod-db-daily-%j.log
#SBATCH --licenses=cfs,scratch
set -uo pipefail

refuse() { echo "slurm/daily.sh: $*; nothing was run" >&2; exit 2; }

# --- the caller's settings win over those of the DESI environment ------------------------
caller_DESI_ROOT=${DESI_ROOT-}
caller_SPECPROD=${SPECPROD-}

# --- software: DESI's environment (desiconda: Python, mpi4py on Cray MPICH, numpy,
# astropy, fitsio, h5py, psycopg2, desiutil), then SPECPROD_DB_MODULES (e.g. the module
# that provides specprod-db). DESI_ENV_SH=none skips it (environment already set up);
# outside NERSC the file does not exist and it is skipped.
DESI_ENV_SH=${DESI_ENV_SH:-/global/cfs/cdirs/desi/software/desi_environment.sh}
if [[ $DESI_ENV_SH != none && -r $DESI_ENV_SH ]]; then
    # shellcheck disable=SC1090
    source "$DESI_ENV_SH" "${DESI_ENV_VERSION:-main}" || refuse "sourcing $DESI_ENV_SH failed"
elif [[ $DESI_ENV_SH != none ]]; then
    echo "slurm/daily.sh: $DESI_ENV_SH not found: using the environment as it is" >&2
fi
if [[ -n ${SPECPROD_DB_MODULES-} ]]; then
    command -v module >/dev/null 2>&1 || refuse "no 'module' command to load $SPECPROD_DB_MODULES"
    # shellcheck disable=SC2086
    module load $SPECPROD_DB_MODULES || refuse "module load $SPECPROD_DB_MODULES failed"
fi
command -v specprod-db >/dev/null 2>&1 \
    || refuse "specprod-db is not on PATH (install it in the environment, or set SPECPROD_DB_MODULES or PATH)"

# --- inputs ------------------------------------------------------------------------------
export DESI_ROOT=${caller_DESI_ROOT:-${DESI_ROOT:-/global/cfs/cdirs/desi}}
export SPECPROD=${caller_SPECPROD:-daily}
SCHEMA=${SPECPROD_DB_SCHEMA:-daily}
# sbatch passes the submitting shell's environment on: a SPECPROD left over from other
# work must not be loaded into schema "daily". Another production needs its own schema.
if [[ $SPECPROD != "$SCHEMA" && -z ${SPECPROD_DB_SCHEMA-} ]]; then
    refuse "SPECPROD=$SPECPROD but schema $SCHEMA: unset SPECPROD, or set SPECPROD_DB_SCHEMA too"
fi

# --- stage directory: BASE on $SCRATCH; the loader adds DATABASE/SCHEMA under it ---------
if [[ -z ${SPECPROD_DB_STAGE_DIR-} ]]; then
    [[ -n ${SCRATCH-} ]] || refuse "neither SPECPROD_DB_STAGE_DIR nor SCRATCH is set"
    export SPECPROD_DB_STAGE_DIR=$SCRATCH/specprod-db-stage
fi
mkdir -p "$SPECPROD_DB_STAGE_DIR" || refuse "cannot create $SPECPROD_DB_STAGE_DIR"

# --- database: SPECPROD_DB_DSN, or PGHOST/PGDATABASE/PGUSER (or PGSERVICE); the password
# only in ~/.pgpass (mode 0600), never here, on a command line or in the job's environment
if [[ -z ${SPECPROD_DB_DSN-}${PGHOST-}${PGSERVICE-} ]] && [[ " $* " != *" --db"* ]]; then
    refuse "no database: set SPECPROD_DB_DSN or PGHOST/PGDATABASE/PGUSER (password in ~/.pgpass)"
fi
shopt -s nocasematch
password_re='(^|[^a-z0-9_])password[[:space:]]*=|postgres(ql)?://[^/@:[:space:]]*:[^@/[:space:]]*@'
for value in "${SPECPROD_DB_DSN-}" "$@"; do
    [[ $value =~ $password_re ]] && refuse "a password in SPECPROD_DB_DSN or the arguments: put it in ~/.pgpass (mode 0600)"
done
shopt -u nocasematch
[[ -z ${PGPASSWORD-} ]] || refuse "PGPASSWORD is set (Slurm stores the job's environment): put the password in ~/.pgpass (mode 0600)"
pgpass=${PGPASSFILE:-$HOME/.pgpass}
if [[ -e $pgpass ]] && [[ $(stat -c %a "$pgpass") != [0-7]00 ]]; then
    refuse "$pgpass is readable by others (libpq ignores it): chmod 600 $pgpass"
fi

# --- the load ----------------------------------------------------------------------------
NTASKS=${SPECPROD_DB_NTASKS:-32}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "slurm/daily.sh: SPECPROD=$SPECPROD DESI_ROOT=$DESI_ROOT schema=$SCHEMA" \
     "stage=$SPECPROD_DB_STAGE_DIR ranks=$NTASKS job=${SLURM_JOB_ID:-none}"
# Perlmutter CPU nodes: 128 cores, 2 hardware threads each: -c 2*floor(128/tasks per node)
srun -n "$NTASKS" -c $((2 * (128 / NTASKS > 0 ? 128 / NTASKS : 1))) --cpu-bind=cores \
    specprod-db load --schema "$SCHEMA" "$@"
status=$?
echo "slurm/daily.sh: specprod-db load exited with status $status"
exit "$status"
