"""Date placeholders in URIs, for nightly partitions: `{date}` (YYYY-MM-DD) or `{date:%Y/%m/%d}`."""

from __future__ import annotations

import datetime as dt
import re

from bertclf.errors import ConfigError

_PLACEHOLDER = re.compile(r"\{date(?::([^}]*))?\}")


def resolve_date(value: str | None) -> dt.date:
    """The given YYYY-MM-DD date, or yesterday in UTC (the usual nightly partition)."""
    if value:
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"date {value!r} is not YYYY-MM-DD") from None
    return dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)


def has_date(uri: str) -> bool:
    return bool(_PLACEHOLDER.search(uri))


def fill_date(uri: str, date: dt.date) -> str:
    return _PLACEHOLDER.sub(lambda m: date.strftime(m.group(1)) if m.group(1) else date.isoformat(), uri)
