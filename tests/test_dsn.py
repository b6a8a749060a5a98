"""DSN redaction (passwords never reach logs or errors) and the DSN fallback chain."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from orchwf.db.dsn import redact
from orchwf.db.resolve import resolve_dsn


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgresql://user:s3cret@host/db", "postgresql://user:***@host/db"),
        ("postgres://user:s3cret@host:5432/db?sslmode=require",
         "postgres://user:***@host:5432/db?sslmode=require"),
        ("postgresql://u:p%40ss@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        # a raw '@' or '/' in the password is hidden too, not half-leaked
        ("postgresql://u:p@ss/w@host/db", "postgresql://u:***@host/db"),
        ("postgresql://host/db?user=u&password=s3cret&sslmode=require",
         "postgresql://host/db?user=u&password=***&sslmode=require"),
        ("host=h password=s3cret user=u", "host=h password=*** user=u"),
        ("password=s3cret", "password=***"),
        ("host=h password = s3cret dbname=d", "host=h password = *** dbname=d"),
        ("host=h password='with space' dbname=d", "host=h password=*** dbname=d"),
        (r"host=h password='it\'s \\ quoted' dbname=d", "host=h password=*** dbname=d"),
        ('host=h password="dq val" dbname=d', "host=h password=*** dbname=d"),
        ("host=h password='never closed dbname=d", "host=h password=***"),
        ("sslpassword=keypw host=h", "sslpassword=*** host=h"),
        ("could not connect to postgresql://u:pw@h/db: refused",
         "could not connect to postgresql://u:***@h/db: refused"),
    ],
)
def test_redacts_passwords(raw: str, expected: str) -> None:
    assert redact(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgresql://127.0.0.1:5432/test",
        "postgresql:///orchwf?host=/var/run/postgresql",
        "postgresql://u:@h/db",  # empty password: nothing to hide
        "host=h user=u dbname=d",
        "host=h mypassword=x dbname=d",  # not the password keyword
        "host=h password='' dbname=d",
        "",
    ],
)
def test_leaves_dsn_without_password_unchanged(raw: str) -> None:
    assert redact(raw) == raw


_pw = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=4, max_size=30
)


@given(_pw)
def test_url_password_never_survives(pw: str) -> None:
    raw = f"postgresql://user:{quote(pw, safe='')}@dbhost:5432/appdb"
    assume(quote(pw, safe="") not in "postgresql://user:***@dbhost:5432/appdb")
    out = redact(raw)
    assert quote(pw, safe="") not in out
    assert out.endswith("@dbhost:5432/appdb")


@given(_pw)
def test_quoted_keyword_password_never_survives(pw: str) -> None:
    escaped = pw.replace("\\", "\\\\").replace("'", "\\'")
    raw = f"host=dbhost user=app password='{escaped}' dbname=appdb"
    out = redact(raw)
    assume(pw not in "host=dbhost user=app password=*** dbname=appdb")
    assert pw not in out
    assert out == "host=dbhost user=app password=*** dbname=appdb"


def test_resolve_prefers_explicit_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_embedded() -> str:
        raise AssertionError("the embedded server must not start")

    monkeypatch.setattr("orchwf.db.embedded.start", no_embedded)
    monkeypatch.setenv("ORCHWF_DSN", "postgresql://env@h/db")
    assert resolve_dsn("postgresql://explicit@h/db") == "postgresql://explicit@h/db"
    assert resolve_dsn(None) == "postgresql://env@h/db"
    assert resolve_dsn("") == "postgresql://env@h/db"


def test_resolve_falls_back_to_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHWF_DSN", raising=False)
    monkeypatch.setattr("orchwf.db.embedded.start", lambda: "postgresql://embedded@h/orchwf")
    assert resolve_dsn(None) == "postgresql://embedded@h/orchwf"
    monkeypatch.setenv("ORCHWF_DSN", "   ")
    assert resolve_dsn(None) == "postgresql://embedded@h/orchwf"
