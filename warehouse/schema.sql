-- perpwatch warehouse schema: raw -> staging -> marts, plus meta and quarantine.
-- Grain (key) of every table is stated in brackets; loads upsert on it, so no key repeats.
-- Marts are (re)built by transforms/ and are not declared here.

CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS staging;
CREATE SCHEMA IF NOT EXISTS marts;
CREATE SCHEMA IF NOT EXISTS meta;
CREATE SCHEMA IF NOT EXISTS quarantine;

CREATE SEQUENCE IF NOT EXISTS raw.payload_id_seq START 1;

-- [raw_id] every response body as received, before parsing. The pipeline stores bodies zlib-compressed
-- and sets encoding = 'zlib' explicitly; the default 'identity' means "stored as received", so a row
-- inserted by hand without `encoding` is read as stored (docs/contract.md).
CREATE TABLE IF NOT EXISTS raw.payloads (
    raw_id      BIGINT NOT NULL,   -- nextval('raw.payload_id_seq') at insert (no DEFAULT: see warehouse.land)
    source      VARCHAR NOT NULL,
    endpoint    VARCHAR NOT NULL,
    params      JSON,
    fetched_at  TIMESTAMPTZ NOT NULL,
    http_status INTEGER,
    body        BLOB,
    sha256      VARCHAR NOT NULL,
    run_id      VARCHAR,
    encoding    VARCHAR DEFAULT 'identity'
);

-- [venue, instrument]
CREATE TABLE IF NOT EXISTS staging.instruments (
    venue VARCHAR NOT NULL, instrument VARCHAR NOT NULL, asset VARCHAR, quote VARCHAR,
    settle VARCHAR, margin VARCHAR, kind VARCHAR, contract_size DOUBLE, contract_unit VARCHAR,
    multiplier DOUBLE, funding_interval_hours DOUBLE, expiry TIMESTAMPTZ, status VARCHAR,
    as_of TIMESTAMPTZ, raw_id BIGINT, ingested_at TIMESTAMPTZ
);

-- [venue, instrument, funding_time]
CREATE TABLE IF NOT EXISTS staging.funding_rates (
    venue VARCHAR NOT NULL, instrument VARCHAR NOT NULL, funding_time TIMESTAMPTZ NOT NULL,
    asset VARCHAR, funding_rate DOUBLE, interval_hours DOUBLE, rate_8h DOUBLE,
    rate_annualized DOUBLE, mark_price DOUBLE, raw_id BIGINT, ingested_at TIMESTAMPTZ
);

-- [venue, instrument, ts]
CREATE TABLE IF NOT EXISTS staging.open_interest (
    venue VARCHAR NOT NULL, instrument VARCHAR NOT NULL, ts TIMESTAMPTZ NOT NULL,
    asset VARCHAR, margin VARCHAR, oi_contracts DOUBLE, oi_base DOUBLE, oi_usd DOUBLE,
    raw_id BIGINT, ingested_at TIMESTAMPTZ
);

-- [venue, instrument, ts, population]
CREATE TABLE IF NOT EXISTS staging.long_short_ratio (
    venue VARCHAR NOT NULL, instrument VARCHAR NOT NULL, ts TIMESTAMPTZ NOT NULL,
    population VARCHAR NOT NULL, asset VARCHAR, long_share DOUBLE, short_share DOUBLE,
    ratio DOUBLE, raw_id BIGINT, ingested_at TIMESTAMPTZ
);

-- [venue, instrument, ts, side, price, qty_base]
CREATE TABLE IF NOT EXISTS staging.liquidations (
    venue VARCHAR NOT NULL, instrument VARCHAR NOT NULL, ts TIMESTAMPTZ NOT NULL,
    side VARCHAR NOT NULL, price DOUBLE NOT NULL, qty_base DOUBLE NOT NULL, asset VARCHAR,
    usd DOUBLE, raw_id BIGINT, ingested_at TIMESTAMPTZ
);

-- [venue, instrument, kind, interval, ts]
CREATE TABLE IF NOT EXISTS staging.prices (
    venue VARCHAR NOT NULL, instrument VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    "interval" VARCHAR NOT NULL, ts TIMESTAMPTZ NOT NULL, asset VARCHAR, open DOUBLE,
    high DOUBLE, low DOUBLE, close DOUBLE, volume_base DOUBLE, volume_usd DOUBLE,
    expiry TIMESTAMPTZ, raw_id BIGINT, ingested_at TIMESTAMPTZ
);

-- [date, ticker]
CREATE TABLE IF NOT EXISTS staging.etf_flows (
    date DATE NOT NULL, ticker VARCHAR NOT NULL, issuer VARCHAR, flow_usd DOUBLE,
    source VARCHAR, raw_id BIGINT, ingested_at TIMESTAMPTZ
);

-- [date, series]
CREATE TABLE IF NOT EXISTS staging.macro_closes (
    date DATE NOT NULL, series VARCHAR NOT NULL, close DOUBLE, source VARCHAR,
    raw_id BIGINT, ingested_at TIMESTAMPTZ
);

-- [as_of, company]
CREATE TABLE IF NOT EXISTS staging.treasury_holdings (
    as_of DATE NOT NULL, company VARCHAR NOT NULL, ticker VARCHAR, country VARCHAR,
    holdings_btc DOUBLE, value_usd DOUBLE, source VARCHAR, raw_id BIGINT, ingested_at TIMESTAMPTZ
);

-- [date, asset]
CREATE TABLE IF NOT EXISTS staging.market_caps (
    date DATE NOT NULL, asset VARCHAR NOT NULL, market_cap_usd DOUBLE, source VARCHAR,
    raw_id BIGINT, ingested_at TIMESTAMPTZ
);

-- [source, dataset, instrument] last timestamp loaded; moves only in the load's transaction.
CREATE TABLE IF NOT EXISTS meta.watermarks (
    source VARCHAR NOT NULL, dataset VARCHAR NOT NULL, instrument VARCHAR NOT NULL,
    last_ts TIMESTAMPTZ, updated_at TIMESTAMPTZ
);

-- [run_id]
CREATE TABLE IF NOT EXISTS meta.runs (
    run_id VARCHAR NOT NULL, kind VARCHAR, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
    status VARCHAR, rows_fetched BIGINT, rows_loaded BIGINT, rows_quarantined BIGINT,
    rows_duplicate BIGINT, message VARCHAR
);

-- [run_id, source, dataset] per-dataset reconciliation of each run.
CREATE TABLE IF NOT EXISTS meta.run_datasets (
    run_id VARCHAR NOT NULL, source VARCHAR NOT NULL, dataset VARCHAR NOT NULL,
    rows_fetched BIGINT, rows_loaded BIGINT, rows_quarantined BIGINT, rows_duplicate BIGINT,
    payloads BIGINT, validation VARCHAR, message VARCHAR
);

-- [batch_id] batches that failed parsing or validation; never loaded.
CREATE TABLE IF NOT EXISTS quarantine.batches (
    batch_id VARCHAR NOT NULL, run_id VARCHAR, source VARCHAR, dataset VARCHAR,
    endpoint VARCHAR, instrument VARCHAR, raw_id BIGINT, raw_ids JSON,
    failed_expectations JSON, rows BIGINT, sample JSON, message VARCHAR,
    received_at TIMESTAMPTZ, resolved_at TIMESTAMPTZ
);
-- row_refs: [{"raw_id", "rows": [row numbers in that payload's parsed rows]}] when only those rows
-- failed (NULL: the payloads in raw_ids were quarantined whole). status: open | released | dropped
-- (`perpwatch quarantine release|drop`); resolved_at is set when it leaves 'open'.
ALTER TABLE quarantine.batches ADD COLUMN IF NOT EXISTS row_refs JSON;
ALTER TABLE quarantine.batches ADD COLUMN IF NOT EXISTS status VARCHAR;
-- payloads quarantined whole and gaps still open after the run (perpwatch/ingest/pipeline.record)
ALTER TABLE meta.runs ADD COLUMN IF NOT EXISTS payloads_quarantined BIGINT;
ALTER TABLE meta.runs ADD COLUMN IF NOT EXISTS gaps_open BIGINT;

-- [source, dataset, instrument, gap_start] rows missing inside a stored series (perpwatch/ingest/gaps.py):
-- open gaps widen the next run's window for that stream until they are filled or found unfillable.
CREATE TABLE IF NOT EXISTS meta.gaps (
    source VARCHAR NOT NULL, dataset VARCHAR NOT NULL, instrument VARCHAR NOT NULL,
    gap_start TIMESTAMPTZ NOT NULL, gap_end TIMESTAMPTZ NOT NULL, missing BIGINT,
    status VARCHAR NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, detected_at TIMESTAMPTZ,
    detected_run VARCHAR, resolved_at TIMESTAMPTZ, resolved_run VARCHAR
);

-- Publication time of provider rows (docs/signals.md, "Publication time"): when a row dated D became
-- known. NULL = the [availability] lag of perpwatch/core/signals.toml applies; marts join on it, not on date.
ALTER TABLE staging.etf_flows ADD COLUMN IF NOT EXISTS available_at TIMESTAMPTZ;
ALTER TABLE staging.macro_closes ADD COLUMN IF NOT EXISTS available_at TIMESTAMPTZ;
ALTER TABLE staging.treasury_holdings ADD COLUMN IF NOT EXISTS available_at TIMESTAMPTZ;

-- [venue, hour] seconds each liquidation websocket stream was connected inside each UTC hour
-- (perpwatch/ingest/collector.py). Hours without a row were not captured: marts treat them as missing, not zero.
CREATE TABLE IF NOT EXISTS meta.liquidation_coverage (
    venue VARCHAR NOT NULL, hour TIMESTAMPTZ NOT NULL, covered_s DOUBLE NOT NULL, updated_at TIMESTAMPTZ
);

-- [source] venue bans (HTTP 418 / Retry-After beyond PERPWATCH_MAX_BAN_WAIT, Bybit 403, Deribit 10028): runs
-- skip the source until banned_until instead of re-triggering the ban (sources/http.py, perpwatch/ingest/pipeline.py).
CREATE TABLE IF NOT EXISTS meta.venue_bans (
    source VARCHAR NOT NULL, banned_until TIMESTAMPTZ NOT NULL, reason VARCHAR, banned_at TIMESTAMPTZ,
    run_id VARCHAR
);

-- [run_id, source, stream] what each liquidation websocket delivered during one collect run (perpwatch/ingest/collector.py).
CREATE TABLE IF NOT EXISTS meta.ws_streams (
    run_id VARCHAR NOT NULL, source VARCHAR NOT NULL, stream VARCHAR NOT NULL, url VARCHAR,
    started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, messages BIGINT, kept BIGINT,
    last_message_at TIMESTAMPTZ, silences BIGINT, reconnects BIGINT
);

-- [asset, side, price] the liquidation-heatmap model's surviving levels after meta.heatmap_progress.through
-- (transforms/heatmap.py): the daily build resumes the fold from here instead of replaying all history.
-- USD = amount x meta.heatmap_progress.scale (a daily build rewrites the scale, not every level).
CREATE TABLE IF NOT EXISTS meta.heatmap_levels (
    asset VARCHAR NOT NULL, side VARCHAR NOT NULL, price DOUBLE NOT NULL, amount DOUBLE
);

-- [asset] what meta.heatmap_levels stands for: the day it is the end of, the newest day built, the last hour
-- and OI folded in, and the settings it was built with (other settings: the next build is a full one).
CREATE TABLE IF NOT EXISTS meta.heatmap_progress (
    asset VARCHAR NOT NULL, through DATE NOT NULL, newest DATE NOT NULL, last_ts TIMESTAMPTZ,
    last_oi_usd DOUBLE, settings VARCHAR NOT NULL, rebuilt_from DATE, scale DOUBLE
);
ALTER TABLE meta.heatmap_progress ADD COLUMN IF NOT EXISTS scale DOUBLE;

-- [seq] every mart write of a build (transforms): which mart, and from which day on (NULL: all of it).
-- Publishing (warehouse/publishing.py) rewrites only what changed since the version a serving copy or the
-- exports reflect.
CREATE TABLE IF NOT EXISTS meta.mart_changes (
    seq BIGINT NOT NULL, table_name VARCHAR NOT NULL, changed_from DATE, changed_at TIMESTAMPTZ
);
