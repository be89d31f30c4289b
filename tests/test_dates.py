"""Date placeholders in URIs and the default nightly date."""

from __future__ import annotations

import datetime as dt

import pytest

from bertclf.scoring.dates import fill_date, has_date, resolve_date

D = dt.date(2024, 3, 7)


def test_fill_date_iso():
    assert fill_date("s3://b/corpus/date={date}/", D) == "s3://b/corpus/date=2024-03-07/"


def test_fill_date_format():
    assert fill_date("s3://b/corpus/{date:%Y/%m/%d}/part.parquet", D) == "s3://b/corpus/2024/03/07/part.parquet"


def test_fill_date_several_placeholders_and_none():
    assert fill_date("/in/{date}/x-{date:%Y%m%d}.parquet", D) == "/in/2024-03-07/x-20240307.parquet"
    assert fill_date("/in/plain.parquet", D) == "/in/plain.parquet"
    assert fill_date("/in/{day}/x", D) == "/in/{day}/x"


def test_has_date():
    assert has_date("a/{date}/b") and has_date("a/{date:%Y}/b")
    assert not has_date("a/date/b") and not has_date("a/{day}/b")


def test_resolve_date_explicit():
    assert resolve_date("2024-02-29") == dt.date(2024, 2, 29)


@pytest.mark.parametrize("bad", ["2023-02-29", "yesterday", "2024-13-01", "07/03/2024"])
def test_resolve_date_invalid(bad):
    with pytest.raises(ValueError, match="YYYY-MM-DD") as exc:
        resolve_date(bad)
    assert repr(bad) in str(exc.value)


@pytest.mark.parametrize("value", [None, ""])
def test_resolve_date_default_is_yesterday_utc(value):
    before = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    got = resolve_date(value)
    after = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    assert got in (before, after)  # robust to a run that straddles midnight UTC
