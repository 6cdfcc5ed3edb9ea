"""conninfo.mask / mask_argv: no password survives, whatever form the conninfo has and
whatever text holds it; everything else is kept."""
import json
import shlex

import pytest

from specprod_db.conninfo import MASK, mask, mask_argv, scrub, secrets_of

SECRET = "s3cr3t-Pw"


@pytest.mark.parametrize("text, expected", [
    # key/value conninfo
    (f"host=h password={SECRET} dbname=x", "host=h password=*** dbname=x"),
    (f"password={SECRET}", "password=***"),
    (f"host=h dbname=x password={SECRET}", "host=h dbname=x password=***"),
    (f"host=h password = {SECRET} dbname=x", "host=h password = *** dbname=x"),
    (f"host=h password ={SECRET}", "host=h password =***"),
    (f"host=h\tpassword=\t{SECRET}\nport=5", "host=h\tpassword=\t***\nport=5"),
    (f"host=h password='{SECRET} with spaces' dbname=x", "host=h password=*** dbname=x"),
    (r"host=h password='it\'s \\ quoted' dbname=x", "host=h password=*** dbname=x"),
    ("host=h password='unterminated and long", "host=h password=***"),
    (r"host=h password=back\ slash dbname=x", "host=h password=*** dbname=x"),
    # libpq skips blanks after "=": the password here is "dbname=x"
    ("host=h password= dbname=x", "host=h password= ***"),
    ("host=h password=''", "host=h password=***"),
    (f"host=h PASSWORD={SECRET}", "host=h PASSWORD=***"),
    (f"PGPASSWORD={SECRET} psql", "PGPASSWORD=*** psql"),
    (f"--password={SECRET}", "--password=***"),
    # URIs
    (f"postgresql://desi:{SECRET}@db.example.org:5432/desi",
     "postgresql://desi:***@db.example.org:5432/desi"),
    (f"postgres://desi:{SECRET}@db/desi", "postgres://desi:***@db/desi"),
    (f"POSTGRESQL://desi:{SECRET}@db", "POSTGRESQL://desi:***@db"),
    (f"postgresql://:{SECRET}@db/desi", "postgresql://:***@db/desi"),
    ("postgresql://desi:p%40ss%2Fw@db/desi", "postgresql://desi:***@db/desi"),
    (f"postgresql://desi:{SECRET}@/desi?host=/run/pg", "postgresql://desi:***@/desi?host=/run/pg"),
    # URI query parameters
    (f"postgresql://db/desi?user=u&password={SECRET}&sslmode=require",
     "postgresql://db/desi?user=u&password=***&sslmode=require"),
    (f"postgresql://db/desi?password={SECRET}", "postgresql://db/desi?password=***"),
    (f"postgresql://db/desi?password={SECRET}#frag", "postgresql://db/desi?password=***#frag"),
    # several in one text
    ("a password=one b postgresql://u:two@h c password='three'",
     "a password=*** b postgresql://u:***@h c password=***"),
])
def test_mask(text, expected):
    assert mask(text) == expected
    assert mask(mask(text)) == expected  # idempotent


@pytest.mark.parametrize("text", [
    "host=/work/main/.pgcluster port=54329 dbname=specprod_db user=postgres",
    "postgresql://desi@db.example.org:5432/desi?sslmode=require",
    "postgresql://db.example.org:5432/desi",
    "postgres://localhost/desi",
    "nopassword=keep passwordless=keep",
    "cannot connect: FATAL: password authentication failed for user \"desi\"",
    "",
])
def test_nothing_to_mask(text):
    assert mask(text) == text


def test_none_and_non_strings():
    assert mask(None) is None
    assert mask(12) == "12"


@pytest.mark.parametrize("conninfo", [
    f"host=h password={SECRET}",
    f"host=h password='{SECRET} x'",
    f"postgresql://u:{SECRET}@h/db",
    f"postgresql://h/db?password={SECRET}&user=u",
])
def test_inside_other_text(conninfo):
    """A conninfo in a repr, in JSON, in an argv joined by spaces, in an error message."""
    texts = [
        repr(conninfo),
        f"cannot connect with conninfo {conninfo!r}: timeout",
        json.dumps({"dsn": conninfo, "tiles": [1, 2]}),
        " ".join(["specprod-db", "load", "--db", conninfo, "--schema", "daily"]),
        shlex.join(["specprod-db", "load", "--db", conninfo, "--schema", "daily"]),
        f"--db={conninfo}",
    ]
    for text in texts:
        masked = mask(text)
        assert SECRET not in masked, (text, masked)
        assert MASK in masked
    # JSON and repr stay well-formed
    assert json.loads(mask(json.dumps({"dsn": conninfo, "n": 1})))["n"] == 1
    assert mask(repr(conninfo)).endswith("'") or mask(repr(conninfo)).endswith('"')
    assert "daily" in mask(" ".join(["--db", conninfo, "--schema", "daily"]))


def test_mask_argv():
    argv = ["/venv/bin/specprod-db", "load", "--schema", "daily",
            "--db", f"host=h port=5 password={SECRET} dbname=d",
            f"--db=postgresql://u:{SECRET}@h/d",
            "--password", SECRET, "--tiles", "1,2"]
    masked = mask_argv(argv)
    assert len(masked) == len(argv)
    assert not any(SECRET in a for a in masked)
    assert masked[:4] == argv[:4] and masked[-2:] == ["--tiles", "1,2"]
    assert masked[5] == "host=h port=5 password=*** dbname=d"
    assert masked[6] == "--db=postgresql://u:***@h/d"
    assert masked[8] == MASK
    assert argv[5].endswith("dbname=d") and SECRET in argv[5]  # the input is not changed
    assert mask_argv(()) == []
    assert mask_argv(iter(["a", "b"])) == ["a", "b"]


def test_secrets_and_scrub():
    """libpq quotes the word it chokes on: an unquoted password with a space in it."""
    dsn = "host=h password=my hidden word dbname=x"
    assert secrets_of(dsn) == ["my hidden word"]
    message = 'missing "=" after "hidden" in connection info string'
    assert scrub(message, dsn) == 'missing "=" after "***" in connection info string'
    assert secrets_of(f"postgresql://u:{SECRET}@h/d") == [SECRET]
    assert secrets_of(f"postgresql://h/d?password={SECRET}") == [SECRET]
    assert secrets_of(r"password='a b\'c'") == ["a b'c"]
    assert secrets_of("host=h") == [] and secrets_of(None) == []
    assert scrub(f"echo {SECRET} and password={SECRET}", f"password={SECRET}") \
        == "echo *** and password=***"
