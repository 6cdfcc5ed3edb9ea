#!/bin/bash
# The initial (monolithic) load of a whole production at NERSC, on N nodes (default 1,
# 32 ranks per node: one root that plans and writes, the others extract). One node keeps
# one writer busy (doc/scale.md: the writer is the bound from ~3 extracting ranks on);
# more nodes help only with more writers (--writers K) on a server with the cores.
#
#   SPECPROD=loa sbatch slurm/initial.sh                      # schema "loa"
#   sbatch slurm/initial.sh loa                               # the same
#   sbatch slurm/initial.sh loa loa_test --tiles 1000,1001    # schema "loa_test", a subset
#   SPECPROD=loa sbatch -N 2 slurm/initial.sh loa --writers 4 # 4 writer ranks
#
# Arguments: [SPECPROD [SCHEMA]] [LOAD OPTIONS]; without them SPECPROD comes from the
# environment and the schema from SPECPROD_DB_SCHEMA (or SCHEMA), else it is SPECPROD.
# The schema is created first (specprod-db init, idempotent).
#
# Wall-clock limit: a rerun of the same command resumes (complete stage files are reused,
# committed tiles are not redone). 10 minutes before the limit Slurm sends this script
# USR1 (--signal below); it then submits itself again, with the same arguments, to start
# when this job ends (sbatch --dependency=afterany:THIS_JOB), at most
# SPECPROD_DB_RESUBMIT times (default 3; 0: never). If the load ends by itself after
# that, the follow-up job is cancelled. By hand:
#   SPECPROD=loa sbatch --dependency=afterany:JOBID slurm/initial.sh
#
# Exit status: that of `specprod-db init` if it fails, else of `specprod-db load`
# (0 loaded, 1 some tile failed, 2 refused, 3 interrupted, 4 internal error; see
# slurm/README.md); 2 also when this script refuses to start.
#SBATCH --qos=regular
#SBATCH --constraint=cpu
#SBATCH --account=desi
#SBATCH --nodes=1
#SBATCH --time=08:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --job-name=specprod-db-initial
#SBATCH --output=specprod-db-initial-%j.log
#SBATCH --licenses=cfs,scratch
set -uo pipefail

me=slurm/initial.sh
refuse() { echo "$me: $*; nothing was run" >&2; exit 2; }

# --- the production and the schema: arguments, else the environment ----------------------
script_args=("$@")
if [[ $# -gt 0 && $1 != -* ]]; then SPECPROD=$1; shift; fi
if [[ $# -gt 0 && $1 != -* ]]; then SPECPROD_DB_SCHEMA=$1; shift; fi
[[ -n ${SPECPROD-} ]] || refuse "no production: SPECPROD=NAME sbatch $me, or sbatch $me NAME"
caller_DESI_ROOT=${DESI_ROOT-}
caller_SPECPROD=$SPECPROD
SCHEMA=${SPECPROD_DB_SCHEMA:-${SCHEMA:-$SPECPROD}}

# --- software: DESI's environment, then SPECPROD_DB_MODULES (see slurm/daily.sh) -----------
DESI_ENV_SH=${DESI_ENV_SH:-/global/cfs/cdirs/desi/software/desi_environment.sh}
if [[ $DESI_ENV_SH != none && -r $DESI_ENV_SH ]]; then
    # shellcheck disable=SC1090
    source "$DESI_ENV_SH" "${DESI_ENV_VERSION:-main}" || refuse "sourcing $DESI_ENV_SH failed"
elif [[ $DESI_ENV_SH != none ]]; then
    echo "$me: $DESI_ENV_SH not found: using the environment as it is" >&2
fi
if [[ -n ${SPECPROD_DB_MODULES-} ]]; then
    command -v module >/dev/null 2>&1 || refuse "no 'module' command to load $SPECPROD_DB_MODULES"
    # shellcheck disable=SC2086
    module load $SPECPROD_DB_MODULES || refuse "module load $SPECPROD_DB_MODULES failed"
fi
command -v specprod-db >/dev/null 2>&1 \
    || refuse "specprod-db is not on PATH (install it in the environment, or set SPECPROD_DB_MODULES or PATH)"

# --- inputs and stage directory (BASE on $SCRATCH; the loader adds DATABASE/SCHEMA) --------
export DESI_ROOT=${caller_DESI_ROOT:-${DESI_ROOT:-/global/cfs/cdirs/desi}}
export SPECPROD=$caller_SPECPROD
if [[ -z ${SPECPROD_DB_STAGE_DIR-} ]]; then
    [[ -n ${SCRATCH-} ]] || refuse "neither SPECPROD_DB_STAGE_DIR nor SCRATCH is set"
    export SPECPROD_DB_STAGE_DIR=$SCRATCH/specprod-db-stage
fi
mkdir -p "$SPECPROD_DB_STAGE_DIR" || refuse "cannot create $SPECPROD_DB_STAGE_DIR"

# --- database: the password only in ~/.pgpass (mode 0600) ----------------------------------
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

# --- resubmission before the wall-clock limit ---------------------------------------------
RESUBMIT=${SPECPROD_DB_RESUBMIT:-3}
followup=
killed=
resubmit() {
    interrupted=USR1
    [[ -z $followup ]] || return 0
    if [[ -z ${SLURM_JOB_ID-} || $RESUBMIT -le 0 ]]; then
        echo "$me: time limit near; not resubmitting (SPECPROD_DB_RESUBMIT=$RESUBMIT);" \
             "rerun: SPECPROD=$SPECPROD sbatch $me ${script_args[*]}" >&2
        return 0
    fi
    followup=$(SPECPROD_DB_RESUBMIT=$((RESUBMIT - 1)) sbatch --parsable \
        --dependency="afterany:$SLURM_JOB_ID" --nodes="${SLURM_JOB_NUM_NODES:-1}" \
        "${SPECPROD_DB_SCRIPT:-$0}" "${script_args[@]}")
    followup=${followup%%;*}
    echo "$me: time limit near: submitted job $followup to resume after job $SLURM_JOB_ID" \
         "(resubmissions left: $((RESUBMIT - 1)))" >&2
}
trap resubmit USR1
trap 'killed=TERM interrupted=TERM' TERM

# --- the schema, then the load -----------------------------------------------------------
NODES=${SLURM_JOB_NUM_NODES:-1}
PER_NODE=${SPECPROD_DB_TASKS_PER_NODE:-32}
NTASKS=$((NODES * PER_NODE))
CPUS=$((2 * (128 / PER_NODE > 0 ? 128 / PER_NODE : 1)))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "$me: SPECPROD=$SPECPROD DESI_ROOT=$DESI_ROOT schema=$SCHEMA" \
     "stage=$SPECPROD_DB_STAGE_DIR nodes=$NODES ranks=$NTASKS job=${SLURM_JOB_ID:-none}"

srun -N 1 -n 1 specprod-db init --schema "$SCHEMA"
status=$?
if [[ $status -ne 0 ]]; then
    echo "$me: specprod-db init exited with status $status" >&2
    exit "$status"
fi

# srun runs in the background so that USR1 is handled while it runs (bash runs a trap only
# between commands, and `wait` is one it interrupts).
srun -N "$NODES" -n "$NTASKS" --ntasks-per-node="$PER_NODE" -c "$CPUS" --cpu-bind=cores \
    specprod-db load --schema "$SCHEMA" --initial "$@" &
srun_pid=$!
status=
while true; do
    interrupted=
    wait "$srun_pid"
    rc=$?
    # 127: srun was already waited for (a signal came just after): keep its status
    [[ $rc -eq 127 && -n $status ]] || status=$rc
    # interrupted by a trapped signal: wait again (at once if srun has ended meanwhile)
    [[ -n $interrupted ]] || break
done
echo "$me: specprod-db load exited with status $status"
# The load ended by itself (not killed at the limit): the follow-up job is not needed.
if [[ -n $followup && -z $killed && $status -le 4 ]]; then
    echo "$me: cancelling follow-up job $followup" >&2
    scancel "$followup" || true
fi
exit "$status"
