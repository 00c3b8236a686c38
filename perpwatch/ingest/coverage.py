"""Capture coverage of the liquidation collector: seconds each venue's stream was connected in each
UTC hour, for meta.liquidation_coverage [venue, hour].

Websocket liquidation streams only show what happens while connected, so a quiet hour and an hour the
collector was down look the same in staging.liquidations. marts.daily_signals tells them apart with
this table (docs/signals.md, "Liquidation capture coverage"): an hour counts when covered_s reaches
[liquidations] min_hour_coverage x 3600, and a venue's uncovered hours are missing data, not zero.

The collector calls `connected` / `disconnected` from its connection loop and `take` at every flush,
messages or not; `write` adds the seconds to the hour's row (capped at 3600) in the flush's
transaction. Every hour of the period a flush reports gets a row for every venue, 0 when the stream
was down throughout, so an outage is recorded as such, not only implied by a missing row. A venue
with several streams counts as connected only while all of them are. If the warehouse is locked,
`put_back` keeps the seconds for the next flush.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import polars as pl

HOUR = timedelta(hours=1)


def _hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _now() -> datetime:
    return datetime.now(UTC)


class Coverage:
    """Connected seconds per (venue, UTC hour), accumulated between flushes. Thread-safe: the
    connection loop and the flush thread both call it."""

    def __init__(self, streams: dict[str, str], start: datetime | None = None):
        """streams: stream key (e.g. raw source `binance_ws`) -> venue (`binance`)."""
        self._venue_of = dict(streams)
        self._need = Counter(streams.values())
        self._up: dict[str, set[str]] = defaultdict(set)
        self._since: dict[str, datetime] = {}     # venue fully connected since (not yet accounted)
        self._pending: dict[tuple[str, datetime], float] = defaultdict(float)
        self._mark = start or _now()               # start of the period the next take reports
        self._lock = threading.Lock()

    def connected(self, stream: str, at: datetime | None = None) -> None:
        at = at or _now()
        with self._lock:
            venue = self._venue_of[stream]
            self._up[venue].add(stream)
            if len(self._up[venue]) == self._need[venue] and venue not in self._since:
                self._since[venue] = at

    def disconnected(self, stream: str, at: datetime | None = None) -> None:
        """Idempotent: a stream that was not connected changes nothing."""
        at = at or _now()
        with self._lock:
            venue = self._venue_of[stream]
            if stream not in self._up[venue]:
                return
            self._up[venue].discard(stream)
            start = self._since.pop(venue, None)
            if start is not None:
                self._add(venue, start, at)

    def _add(self, venue: str, start: datetime, end: datetime) -> None:
        t = start
        while t < end:
            h = _hour(t)
            nxt = min(end, h + HOUR)
            self._pending[(venue, h)] += (nxt - t).total_seconds()
            t = nxt

    def take(self, now: datetime | None = None) -> dict[tuple[str, datetime], float]:
        """The seconds accumulated up to `now`, one entry per venue and hour of the period since the last
        take (0 where the venue was down), and forget them."""
        now = now or _now()
        with self._lock:
            for venue, start in list(self._since.items()):
                self._add(venue, start, now)
                self._since[venue] = max(start, now)
            h = _hour(self._mark)
            while h < now:
                for venue in self._need:
                    self._pending.setdefault((venue, h), 0.0)
                h += HOUR
            self._mark = max(self._mark, now)
            out = dict(self._pending)
            self._pending.clear()
            return out

    def put_back(self, taken: dict[tuple[str, datetime], float]) -> None:
        with self._lock:
            for k, s in taken.items():
                self._pending[k] += s

    @staticmethod
    def write(con, taken: dict[tuple[str, datetime], float], now: datetime | None = None) -> int:
        """Add the seconds to meta.liquidation_coverage (a new row per new (venue, hour)); returns rows touched."""
        if not taken:
            return 0
        df = pl.DataFrame(
            {"venue": [v for v, _ in taken], "hour": [h for _, h in taken], "covered_s": list(taken.values())},
            schema={"venue": pl.Utf8, "hour": pl.Datetime("us", "UTC"), "covered_s": pl.Float64})
        at = now or _now()
        con.register("__cov", df.to_arrow())
        try:
            con.execute("UPDATE meta.liquidation_coverage t SET covered_s = least(3600.0, t.covered_s + c.covered_s), "
                        "updated_at = ? FROM __cov c WHERE t.venue = c.venue AND t.hour = c.hour", [at])
            con.execute("INSERT INTO meta.liquidation_coverage (venue, hour, covered_s, updated_at) "
                        "SELECT c.venue, c.hour, least(3600.0, c.covered_s), ? FROM __cov c "
                        "ANTI JOIN meta.liquidation_coverage t ON t.venue = c.venue AND t.hour = c.hour", [at])
        finally:
            con.unregister("__cov")
        return df.height
