"""The NERSC batch scripts (slurm/daily.sh, slurm/initial.sh), run outside NERSC.

Fake ``srun``, ``sbatch``, ``scancel``, ``module`` and ``specprod-db`` executables, written
into ``tmp_path/bin`` and placed first on PATH, record their arguments and the relevant
environment variables (one JSON line per call) and exit with a chosen status; a fake
``desi_environment.sh`` (``DESI_ENV_SH``) stands in for DESI's environment.
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DAILY = REPO / "slurm" / "daily.sh"
INITIAL = REPO / "slurm" / "initial.sh"

#: Variables every fake records.
RECORDED = ["SPECPROD", "DESI_ROOT", "SPECPROD_DB_STAGE_DIR", "SPECPROD_DB_DSN", "PGHOST",
            "PGDATABASE", "PGUSER", "PGPASSWORD", "OMP_NUM_THREADS", "SPECPROD_DB_RESUBMIT",
            "SLURM_JOB_ID"]

FAKE = f"""#!{sys.executable}
import json, os, sys, time
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
env = {{k: os.environ[k] for k in {RECORDED!r} if k in os.environ}}
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({{"cmd": name, "args": args, "env": env}}) + "\\n")
if name == "srun":
    which = "LOAD" if "load" in args else "INIT"
    if which == "LOAD" and os.environ.get("FAKE_SRUN_RELEASE"):
        release = os.environ["FAKE_SRUN_RELEASE"]
        open(release + ".started", "w").close()
        deadline = time.time() + 60
        while not os.path.exists(release) and time.time() < deadline:
            time.sleep(0.02)
        sys.exit(int(open(release).read() or 0))
    sys.exit(int(os.environ.get("FAKE_SRUN_" + which + "_STATUS", "0")))
if name == "sbatch":
    print("4242")
if name == "specprod-db":
    sys.exit(99)   # only ever started through srun, never by the script itself
"""

DESI_ENV = """# fake desi_environment.sh: records its argument, sets what DESI's does
echo "$1" > "$FAKE_DESI_ENV_LOG"
export DESI_ROOT=/desienv/root
"""


@pytest.fixture
def fake(tmp_path):
    """The fakes, the log and a clean environment (``env``) to run a script with."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("srun", "sbatch", "scancel", "module", "specprod-db"):
        path = bindir / name
        path.write_text(FAKE)
        path.chmod(0o755)
    desi_env = tmp_path / "desi_environment.sh"
    desi_env.write_text(DESI_ENV)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".pgpass").write_text("db.example.org:5432:desi:desi_admin:s3cr3t-pgpass\n")
    (home / ".pgpass").chmod(0o600)

    class Fake:
        log = tmp_path / "calls.jsonl"
        desi_env_log = tmp_path / "desi_env.log"
        scratch = tmp_path / "scratch"
        env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(home),
               "SCRATCH": str(tmp_path / "scratch"), "FAKE_LOG": str(tmp_path / "calls.jsonl"),
               "FAKE_DESI_ENV_LOG": str(tmp_path / "desi_env.log"),
               "DESI_ENV_SH": str(desi_env), "PGHOST": "db.example.org",
               "PGDATABASE": "desi", "PGUSER": "desi_admin", "SLURM_JOB_ID": "1234"}

        def calls(self, cmd=None):
            if not self.log.exists():
                return []
            rows = [json.loads(line) for line in self.log.read_text().splitlines()]
            return [r for r in rows if cmd is None or r["cmd"] == cmd]

        def run(self, script, *args, **env):
            full = dict(self.env)
            for key, value in env.items():
                if value is None:
                    full.pop(key, None)
                else:
                    full[key] = str(value)
            return subprocess.run(["bash", str(script), *args], env=full, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=60)

    return Fake()


def only_srun(fake):
    calls = fake.calls("srun")
    assert len(calls) == 1, calls
    return calls[0]


@pytest.mark.parametrize("script", [DAILY, INITIAL], ids=["daily", "initial"])
def test_syntax(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


# --- daily.sh -----------------------------------------------------------------------------

def test_daily_defaults(fake):
    res = fake.run(DAILY)
    assert res.returncode == 0, res.stderr
    call = only_srun(fake)
    assert call["args"] == ["-n", "32", "-c", "8", "--cpu-bind=cores",
                            "specprod-db", "load", "--schema", "daily"]
    env = call["env"]
    assert env["SPECPROD"] == "daily"
    assert env["DESI_ROOT"] == "/desienv/root"        # from the DESI environment
    stage = fake.scratch / "specprod-db-stage"
    assert env["SPECPROD_DB_STAGE_DIR"] == str(stage) and stage.is_dir()
    assert env["OMP_NUM_THREADS"] == "1"
    assert fake.desi_env_log.read_text().strip() == "main"
    assert fake.calls("sbatch") == [] and fake.calls("module") == []


def test_daily_caller_overrides(fake, tmp_path):
    res = fake.run(DAILY, "--no-delete", "--stage-min-free", "1000",
                   DESI_ROOT="/caller/root", SPECPROD_DB_STAGE_DIR=tmp_path / "stage",
                   SPECPROD_DB_NTASKS=8, DESI_ENV_VERSION="24.4", SPECPROD="daily")
    assert res.returncode == 0, res.stderr
    call = only_srun(fake)
    assert call["args"] == ["-n", "8", "-c", "32", "--cpu-bind=cores", "specprod-db",
                            "load", "--schema", "daily", "--no-delete",
                            "--stage-min-free", "1000"]
    assert call["env"]["DESI_ROOT"] == "/caller/root"   # the caller wins over desienv
    assert call["env"]["SPECPROD_DB_STAGE_DIR"] == str(tmp_path / "stage")
    assert fake.desi_env_log.read_text().strip() == "24.4"


def test_daily_stray_specprod_refused(fake):
    """sbatch passes the submitter's environment on: SPECPROD=iron is not loaded into
    schema daily unless a schema is named as well."""
    res = fake.run(DAILY, SPECPROD="iron")
    assert res.returncode == 2 and "SPECPROD_DB_SCHEMA" in res.stderr
    assert fake.calls("srun") == []
    res = fake.run(DAILY, SPECPROD="iron", SPECPROD_DB_SCHEMA="iron")
    assert res.returncode == 0, res.stderr
    call = only_srun(fake)
    assert call["args"][-2:] == ["--schema", "iron"] and call["env"]["SPECPROD"] == "iron"


@pytest.mark.parametrize("status", [0, 1, 2, 3, 4, 137])
def test_daily_exit_status(fake, status):
    res = fake.run(DAILY, FAKE_SRUN_LOAD_STATUS=status)
    assert res.returncode == status
    assert f"exited with status {status}" in res.stdout


def test_daily_outside_nersc(fake):
    """Without desi_environment.sh the script goes on with the environment it has; a
    module list needs a module command (here the fake one)."""
    res = fake.run(DAILY, DESI_ENV_SH="/nonexistent/desi_environment.sh")
    assert res.returncode == 0 and "not found" in res.stderr
    assert only_srun(fake)["env"]["DESI_ROOT"] == "/global/cfs/cdirs/desi"
    fake.log.unlink()
    res = fake.run(DAILY, DESI_ENV_SH="none", SPECPROD_DB_MODULES="python specprod-db/main")
    assert res.returncode == 0, res.stderr
    assert [c["args"] for c in fake.calls("module")] == [["load", "python", "specprod-db/main"]]
    assert not fake.desi_env_log.exists()


def test_daily_missing_pieces_refused(fake, tmp_path):
    bare = tmp_path / "bare"                # a PATH with neither module nor specprod-db
    bare.mkdir()
    (bare / "srun").symlink_to(tmp_path / "bin" / "srun")
    cases = [
        (dict(SPECPROD_DB_MODULES="x", PATH=f"{bare}:/usr/bin:/bin"), "module"),
        (dict(PATH=f"{bare}:/usr/bin:/bin"), "specprod-db is not on PATH"),
        (dict(SCRATCH=None), "SCRATCH"),
        (dict(PGHOST=None), "no database"),
    ]
    for env, message in cases:
        res = fake.run(DAILY, **env)
        assert res.returncode == 2 and message in res.stderr, (env, res.stderr)
    assert fake.calls("srun") == []
    # --db on the command line (without a password) is a database too
    res = fake.run(DAILY, "--db", "host=db.example.org dbname=desi", PGHOST=None)
    assert res.returncode == 0, res.stderr


SECRET = "pa55-W0rd"


@pytest.mark.parametrize("script", [DAILY, INITIAL], ids=["daily", "initial"])
@pytest.mark.parametrize("where", ["dsn", "dsn-uri", "dsn-uri-query", "pgpassword", "arg"])
def test_password_refused(fake, script, where):
    env, args = {"SPECPROD": "daily"}, []
    if where == "dsn":
        env["SPECPROD_DB_DSN"] = f"host=db dbname=desi password = {SECRET}"
    elif where == "dsn-uri":
        env["SPECPROD_DB_DSN"] = f"postgresql://desi_admin:{SECRET}@db.example.org/desi"
    elif where == "dsn-uri-query":
        env["SPECPROD_DB_DSN"] = f"postgresql://db.example.org/desi?PassWord={SECRET}"
    elif where == "pgpassword":
        env["PGPASSWORD"] = SECRET
    else:
        args = ["--db", f"host=db password={SECRET}"]
    res = fake.run(script, *args, **env)
    assert res.returncode == 2 and ".pgpass" in res.stderr
    assert SECRET not in res.stderr + res.stdout
    assert fake.calls() == []


def test_pgpass_mode(fake):
    pgpass = Path(fake.env["HOME"]) / ".pgpass"
    pgpass.chmod(0o644)
    res = fake.run(DAILY)
    assert res.returncode == 2 and "chmod 600" in res.stderr
    pgpass.chmod(0o600)
    assert fake.run(DAILY).returncode == 0


@pytest.mark.parametrize("script", [DAILY, INITIAL], ids=["daily", "initial"])
def test_credentials_only_in_pgpass(fake, script):
    """Credentials come from ~/.pgpass: no password in any command line or environment
    the fakes saw (and a DSN without a password is passed on as it is)."""
    dsn = "host=db.example.org dbname=desi user=desi_admin sslmode=require"
    res = fake.run(script, SPECPROD="loa", SPECPROD_DB_SCHEMA="loa", SPECPROD_DB_DSN=dsn)
    assert res.returncode == 0, res.stderr
    calls = fake.calls()
    assert calls and all(c["env"].get("SPECPROD_DB_DSN") == dsn for c in calls)
    text = fake.log.read_text() + res.stdout + res.stderr
    assert "s3cr3t-pgpass" not in text and "password" not in text.lower()
    assert all("PGPASSWORD" not in c["env"] for c in calls)


# --- initial.sh ---------------------------------------------------------------------------

def test_initial_from_environment(fake):
    res = fake.run(INITIAL, SPECPROD="loa", SLURM_JOB_NUM_NODES=2)
    assert res.returncode == 0, res.stderr
    init, load = fake.calls("srun")
    assert init["args"] == ["-N", "1", "-n", "1", "specprod-db", "init", "--schema", "loa"]
    assert load["args"] == ["-N", "2", "-n", "64", "--ntasks-per-node=32", "-c", "8",
                            "--cpu-bind=cores", "specprod-db", "load", "--schema", "loa",
                            "--initial"]
    for call in (init, load):
        assert call["env"]["SPECPROD"] == "loa"
        assert call["env"]["DESI_ROOT"] == "/desienv/root"
        assert call["env"]["SPECPROD_DB_STAGE_DIR"] == str(fake.scratch / "specprod-db-stage")
    assert fake.calls("sbatch") == [] and fake.calls("scancel") == []


def test_initial_from_arguments(fake, tmp_path):
    res = fake.run(INITIAL, "loa", "loa_test", "--tiles", "1000,1001", SPECPROD=None,
                   SLURM_JOB_NUM_NODES=None, SPECPROD_DB_TASKS_PER_NODE=16,
                   SPECPROD_DB_STAGE_DIR=tmp_path / "stage", DESI_ROOT="/caller/root")
    assert res.returncode == 0, res.stderr
    init, load = fake.calls("srun")
    assert init["args"][-2:] == ["--schema", "loa_test"]
    assert load["args"] == ["-N", "1", "-n", "16", "--ntasks-per-node=16", "-c", "16",
                            "--cpu-bind=cores", "specprod-db", "load", "--schema",
                            "loa_test", "--initial", "--tiles", "1000,1001"]
    assert load["env"]["SPECPROD"] == "loa" and load["env"]["DESI_ROOT"] == "/caller/root"
    assert load["env"]["SPECPROD_DB_STAGE_DIR"] == str(tmp_path / "stage")
    # the schema from the environment (SCHEMA, as doc/initial.rst shows it)
    fake.log.unlink()
    assert fake.run(INITIAL, SPECPROD="loa", SCHEMA="loa_x").returncode == 0
    assert all(c["args"][c["args"].index("--schema") + 1] == "loa_x"
               for c in fake.calls("srun"))


def test_initial_needs_a_production(fake):
    res = fake.run(INITIAL, SPECPROD=None)
    assert res.returncode == 2 and "no production" in res.stderr
    assert fake.calls() == []


@pytest.mark.parametrize("status", [0, 1, 2, 3, 4])
def test_initial_exit_status(fake, status):
    res = fake.run(INITIAL, SPECPROD="loa", FAKE_SRUN_LOAD_STATUS=status)
    assert res.returncode == status
    assert len(fake.calls("srun")) == 2


def test_initial_init_fails(fake):
    res = fake.run(INITIAL, SPECPROD="loa", FAKE_SRUN_INIT_STATUS=2)
    assert res.returncode == 2
    assert [c["args"][5] for c in fake.calls("srun")] == ["init"]   # no load


# --- resubmission before the wall-clock limit ------------------------------------------------

def start_initial(fake, tmp_path, *args, **env):
    """initial.sh running, its load (fake srun) blocked until ``release`` holds a status."""
    release = tmp_path / "release"
    full = dict(fake.env, SPECPROD="loa", SLURM_JOB_NUM_NODES="4",
                FAKE_SRUN_RELEASE=str(release))
    full.update({k: str(v) for k, v in env.items()})
    proc = subprocess.Popen(["bash", str(INITIAL), *args], env=full, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not Path(f"{release}.started").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    return proc, release


def wait_for(predicate, proc):
    deadline = time.time() + 30
    while not predicate():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)


def finish(proc, release, status):
    # written aside and renamed: the fake srun polls for the file and must never read it
    # created but still empty (which it would take for status 0)
    tmp = release.with_suffix(".tmp")
    tmp.write_text(str(status))
    tmp.rename(release)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_resubmit_at_time_limit(fake, tmp_path):
    """USR1 (sent by Slurm 10 min before the limit, --signal=B:USR1@600) makes the script
    submit itself again, after this job, with the same arguments; killed at the limit
    (TERM), it leaves the follow-up job queued."""
    proc, release = start_initial(fake, tmp_path, "loa", "loa_s", "--tiles", "1,2")
    proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: fake.calls("sbatch"), proc)
    proc.send_signal(signal.SIGUSR1)                  # a second signal submits nothing more
    proc.send_signal(signal.SIGTERM)                  # the limit
    status, out, err = finish(proc, release, 143)     # srun: tasks killed by SIGTERM
    assert status == 143, err
    (sbatch,) = fake.calls("sbatch")
    assert sbatch["args"] == ["--parsable", "--dependency=afterany:1234", "--nodes=4",
                              str(INITIAL), "loa", "loa_s", "--tiles", "1,2"]
    assert sbatch["env"]["SPECPROD_DB_RESUBMIT"] == "2"
    assert sbatch["env"]["SPECPROD"] == "loa"
    assert "submitted job 4242" in err
    assert fake.calls("scancel") == []


@pytest.mark.parametrize("status", [0, 1])
def test_resubmitted_then_finished(fake, tmp_path, status):
    """A load that ends by itself after the follow-up was submitted cancels it."""
    proc, release = start_initial(fake, tmp_path, SPECPROD_DB_RESUBMIT=1)
    proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: fake.calls("sbatch"), proc)
    code, out, err = finish(proc, release, status)
    assert code == status, err
    assert fake.calls("sbatch")[0]["env"]["SPECPROD_DB_RESUBMIT"] == "0"
    assert [c["args"] for c in fake.calls("scancel")] == [["4242"]]


def test_resubmit_disabled(fake, tmp_path):
    proc, release = start_initial(fake, tmp_path, SPECPROD_DB_RESUBMIT=0)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)                                   # the trap runs while srun waits
    code, out, err = finish(proc, release, 0)
    assert code == 0 and "not resubmitting" in err and "sbatch --dependency" not in err
    assert fake.calls("sbatch") == [] and fake.calls("scancel") == []
