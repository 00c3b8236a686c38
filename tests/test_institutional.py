"""Institutional / traditional-market sources: parsers on the recorded payloads (hand-checked values),
provider plans and secrets, and one end-to-end pass against the simulator."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from perpwatch import jobs
from perpwatch.sources import coingecko, farside, fred, sosovalue, stooq
from perpwatch.sources.base import ParseContext

FIXTURES = Path(__file__).resolve().parent / "fixtures"

FETCHED = datetime(2026, 11, 20, 12, tzinfo=UTC)


def ctx(at: datetime = FETCHED) -> ParseContext:
    return ParseContext(at, {})


def raw(rel: str) -> bytes:
    return (FIXTURES / rel).read_bytes()


def flows(df: pl.DataFrame, day: date) -> dict[str, float]:
    return {t: v for t, v in df.filter(pl.col("date") == day).select("ticker", "flow_usd").iter_rows()}


# --------------------------------------------------------------------------- Farside

def test_farside_cells_json_parentheses_dash_and_holiday():
    recs = json.loads(raw("etf_flows/farside_btc_cells.scraped_excerpt.json"))
    df, problems = farside.wide_records_to_frame(recs)
    d11 = flows(df, date(2024, 1, 11))
    assert d11["GBTC"] == -95_100_000.0            # "(95.1)" US$ m
    assert d11["IBIT"] == 111_700_000.0
    assert "BTC" not in d11                        # "-": the mini trust was not trading yet
    assert len(d11) == 10
    assert flows(df, date(2024, 1, 15)) == {}      # MLK day: every fund "-", Total "0.0"
    assert flows(df, date(2024, 2, 19)) == {}      # Presidents' Day
    # 12 Mar 2024: Total "1,045.0" is not stored; the tickers sum to it
    assert sum(flows(df, date(2024, 3, 12)).values()) == pytest.approx(1_045_000_000.0)
    assert sum(flows(df, date(2024, 1, 16)).values()) == pytest.approx(-52_700_000.0)
    assert flows(df, date(2024, 3, 4))["BTCW"] == -3_200_000.0
    assert df.filter(pl.col("ticker") == "IBIT")["issuer"][0] == "BlackRock"
    holidays = sorted(p["row"] for p in problems if "holiday" in p["reason"])
    assert holidays == [3, 10]
    assert not [p for p in problems if p["level"] == "bad"]


def test_farside_scraped_csv_has_the_same_values_as_the_json():
    csv_df, _ = farside.wide_records_to_frame(pl.read_csv(raw("etf_flows/farside_btc_cells.scraped_excerpt.csv"),
                                                          infer_schema=False))
    json_df, _ = farside.wide_records_to_frame(json.loads(raw("etf_flows/farside_btc_cells.scraped_excerpt.json")))
    assert csv_df.drop("_row").equals(json_df.drop("_row"))
    assert csv_df.height == 10 * 11 - 0    # 11 trading days x 10 live funds (BTC "-")


def test_farside_html_table_drops_summary_row():
    out = farside.parse_page(raw("etf_flows/farside_btc_table.SHAPE_ONLY.htm"), {}, ctx())["etf_flows"]
    assert sorted(out["date"].unique().to_list()) == [date(2024, 1, 11), date(2024, 3, 12)]
    assert out.height == 20
    assert flows(out, date(2024, 3, 12))["BTCO"] == -19_700_000.0
    assert set(out["source"].unique()) == {"farside"}
    assert out.columns == ["date", "ticker", "issuer", "flow_usd", "source"]


def test_farside_summary_objects_placeholder_and_revision():
    recs = [
        {"Date": "30 Oct 2024", "IBIT": "1,000.5", "GBTC": "(1,234.0)", "Total": "(233.5)"},
        {"Date": "31 Oct 2024", "IBIT": "0.0", "GBTC": "0.0", "Total": "0.0"},      # not published yet
        {"Date": "Total", "IBIT": "23,987.0", "GBTC": "(20,061.9)", "Total": "22,005.9"},
        {"Date": "Average", "IBIT": "119.9", "GBTC": "(100.3)", "Total": "110.0"},
        {"Date": "3O Oct 2024", "IBIT": "1.0", "GBTC": "2.0", "Total": "3.0"},       # typo'd date
        {"Date": "29 Oct 2024", "IBIT": "abc", "GBTC": "1.0", "Total": "0.0"},
    ]
    df, problems = farside.wide_records_to_frame(recs)
    assert flows(df, date(2024, 10, 30)) == {"IBIT": 1_000_500_000.0, "GBTC": -1_234_000_000.0}
    assert df["date"].unique().to_list() == [date(2024, 10, 30)]
    by_row = {p["row"]: p for p in problems}
    assert by_row[2]["level"] == "skip" and "placeholder" in by_row[2]["reason"]
    assert by_row[3]["level"] == by_row[4]["level"] == "skip"
    assert by_row[5] == {"row": 5, "level": "bad", "reason": "unparseable date: '3O Oct 2024'"}
    assert by_row[6]["level"] == "bad" and "unparseable number: 'abc' for IBIT" in by_row[6]["reason"]


def test_farside_page_without_table_raises():
    with pytest.raises(ValueError, match="no <table>"):
        farside.parse_page(b"<html><body>403 Forbidden</body></html>", {}, ctx())


# --------------------------------------------------------------------------- SoSoValue

def test_sosovalue_inflow_chart_usd_totals_both_shapes():
    body = json.loads(raw("etf_flows/sosovalue_openapi_v2_etf_historicalInflowChart.json"))
    df = sosovalue.parse_inflow_chart(body, {"type": "us-btc-spot"}, ctx())["etf_flows"]
    assert df.to_dicts() == [
        {"date": date(2024, 4, 11), "ticker": "TOTAL", "issuer": None, "flow_usd": 91_269_283.0, "source": "sosovalue"},
        {"date": date(2024, 4, 12), "ticker": "TOTAL", "issuer": None, "flow_usd": -55_066_297.0, "source": "sosovalue"},
    ]
    bare = {"code": 0, "data": body["data"]["list"]}
    assert sosovalue.parse_inflow_chart(bare, {}, ctx())["etf_flows"].equals(df)
    with pytest.raises(ValueError, match="error code 40001"):
        sosovalue.parse_inflow_chart({"code": 40001, "msg": "invalid apikey", "data": None}, {}, ctx())


def test_sosovalue_key_travels_as_header_and_is_never_landed(monkeypatch):
    monkeypatch.setenv("SOSOVALUE_API_KEY", "sk-test-123")
    cl = sosovalue.make_client(lander=None)
    assert cl._secret_headers == {"x-soso-api-key": "sk-test-123"}
    monkeypatch.delenv("SOSOVALUE_API_KEY")
    monkeypatch.delenv("PERPWATCH_URL_SOSOVALUE", raising=False)
    assert sosovalue.plan(pl.DataFrame(), ["BTC"]) == []          # no key, real host: not planned


# --------------------------------------------------------------------------- CoinGecko

def test_coingecko_treasury_stamped_with_fetch_date():
    body = json.loads(raw("coingecko/api_v3_companies_public_treasury_bitcoin.json"))
    df = coingecko.parse_treasury(body, {}, ctx(datetime(2026, 11, 20, 23, 59, tzinfo=UTC)))["treasury_holdings"]
    assert df.to_dicts()[0] == {"as_of": date(2026, 11, 20), "company": "Strategy", "ticker": "MSTR.US",
                                "country": "US", "holdings_btc": 843738.0, "value_usd": 64484706340.107254,
                                "source": "coingecko",
                                "available_at": datetime(2026, 11, 20, 23, 59, tzinfo=UTC)}   # when fetched
    assert df["holdings_btc"].sum() == 843738.0 + 43514.0


def test_coingecko_global_seconds_and_shares():
    body = json.loads(raw("coingecko/api_v3_global.real_2024-05-23.trimmed.json"))
    df = coingecko.parse_global(body, {}, ctx())["market_caps"]
    caps = {a: v for a, v in df.select("asset", "market_cap_usd").iter_rows()}
    assert set(df["date"].unique()) == {date(2024, 5, 23)}          # updated_at 1716476680 is seconds
    assert caps["TOTAL"] == 2670750179056.94
    assert caps["BTC"] == pytest.approx(1_337_296_109_095.78)      # 2.67075e12 x 50.0719 %
    assert caps["ETH"] == pytest.approx(453_055_175_730.25)


def test_coingecko_market_chart_end_of_day_value():
    day = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp() * 1000)
    h = 3_600_000
    # midnight 1 May closes 30 Apr; 24:00 (= 2 May 00:00) closes 1 May; 2 May 06:00 is 2 May so far
    body = {"market_caps": [[day, 1.0e12], [day + 23 * h, 1.1e12], [day + 24 * h, 1.2e12], [day + 30 * h, 1.3e12],
                            [day + 31 * h, None]]}
    out = coingecko.PARSERS["/api/v3/coins/bitcoin/market_chart"](body, {"vs_currency": "usd"}, ctx())["market_caps"]
    assert out.select("date", "market_cap_usd").rows() == [
        (date(2024, 4, 30), 1.0e12), (date(2024, 5, 1), 1.2e12), (date(2024, 5, 2), 1.3e12)]
    assert set(out["asset"]) == {"BTC"}


# --------------------------------------------------------------------------- FRED

def test_fred_sp500_blank_holidays_skipped_never_zero():
    df = fred.parse_csv(raw("fred/fredgraph_SP500.csv"), {"id": "SP500"}, ctx())["macro_closes"]
    assert df.height == 64 - 5                      # 5 holidays written as an empty field
    assert date(2025, 11, 27) not in df["date"].to_list()
    assert (df["close"] > 0).all()
    row = df.filter(pl.col("date") == date(2025, 11, 26)).to_dicts()[0]
    assert row == {"date": date(2025, 11, 26), "series": "SPX", "close": 6812.61, "source": "fred:SP500"}


def test_fred_nasdaq_and_broad_dollar_codes():
    ndx = fred.parse_csv(raw("fred/fredgraph_NASDAQCOM.csv"), {}, ctx())["macro_closes"]
    assert ndx.height == 27 and set(ndx["series"]) == {"NDX"}
    assert ndx.filter(pl.col("date") == date(2026, 1, 5))["close"][0] == 23395.82
    dxy = fred.parse_csv(raw("fred/fredgraph_DTWEXBGS.csv"), {}, ctx())["macro_closes"]
    assert dxy.height == 42 and set(dxy["series"]) == {"DXY"} and set(dxy["source"]) == {"fred:DTWEXBGS"}
    assert {date(2015, 2, 16), date(2015, 2, 17), date(2015, 3, 5)}.isdisjoint(dxy["date"].to_list())


def test_fred_old_layout_date_header_and_dot_marker():
    df, problems = fred.csv_frame(raw("shared_data/fred_nasdaqcom.head15.csv"))
    assert df.height == 14                          # 2019-02-18 (Presidents' Day) is "."
    assert date(2019, 2, 18) not in df["date"].to_list()
    assert df["close"][0] == 7298.20
    assert [p["level"] for p in problems] == ["skip"]
    wide, _ = fred.csv_frame(b"DATE,SP500,NASDAQCOM\n2020-01-02,3257.85,9092.19\n2020-01-03,.,9020.77\n")
    assert wide.select("date", "series", "close").rows() == [
        (date(2020, 1, 2), "SPX", 3257.85), (date(2020, 1, 2), "NDX", 9092.19), (date(2020, 1, 3), "NDX", 9020.77)]


def test_fred_error_page_is_not_parsed():
    with pytest.raises(ValueError, match="not a fredgraph CSV"):
        fred.parse_csv(b"<!DOCTYPE html><html>Error: series does not exist.</html>", {}, ctx())


# --------------------------------------------------------------------------- Stooq / gold

def test_stooq_apikey_http200_body_raises_clear_error():
    body = raw("stooq/error_body_http200.txt")
    with pytest.raises(stooq.StooqKeyRequired, match="requires an API key"):
        stooq.parse_csv(body, {"s": "xauusd", "i": "d"}, ctx())
    with pytest.raises(stooq.StooqKeyRequired, match="proof-of-work"):
        stooq.parse_csv(b"<!DOCTYPE html><html><script>/* pow */</script></html>", {"s": "xauusd"}, ctx())


def test_stooq_polish_and_english_headers():
    pl_df = stooq.parse_csv(raw("stooq/spx_d.pl_headers_excerpt.csv"), {"s": "^spx"}, ctx())["macro_closes"]
    assert pl_df.height == 11
    assert pl_df.row(0, named=True) == {"date": date(2000, 1, 3), "series": "SPX", "close": 1455.22,
                                        "source": "stooq:^spx"}
    en = stooq.parse_csv(raw("stooq/spx_d.en_headers_SHAPE_ONLY.csv"), {"s": "xauusd"}, ctx())["macro_closes"]
    assert en["date"].to_list() == [date(1950, 1, 3), date(1950, 1, 4)] and set(en["series"]) == {"GOLD"}
    empty = stooq.parse_csv(b"No data", {"s": "xauusd"}, ctx())["macro_closes"]
    assert empty.height == 0


def test_gold_route_stooq_with_key_or_paxg_without(monkeypatch):
    monkeypatch.delenv("STOOQ_API_KEY", raising=False)
    monkeypatch.delenv("PERPWATCH_URL_STOOQ", raising=False)
    (s,) = stooq.plan(pl.DataFrame(), ["BTC"])
    assert (s.instrument, s.name) == ("PAXGUSDT", "macro_closes/paxg")
    monkeypatch.setenv("STOOQ_API_KEY", "stq-secret")
    (s,) = stooq.plan(pl.DataFrame(), ["BTC"])
    assert s.instrument == "xauusd"
    cl = stooq.make_client(lander=None)
    assert cl.session.params == {"apikey": "stq-secret"}    # session-level: sent, never in landed params


def test_paxg_daily_klines_closed_candles_only():
    d0 = int(datetime(2026, 11, 18, tzinfo=UTC).timestamp() * 1000)
    day = 86_400_000
    rows = [[d0 + i * day, "4000", "4100", "3900", str(4050 + i), "10", d0 + (i + 1) * day - 1, "40500", 5, "5",
             "20000", "0"] for i in range(3)]
    out = stooq.parse_paxg_klines(rows, {"symbol": "PAXGUSDT", "interval": "1d"},
                                  ctx(datetime(2026, 11, 20, 12, tzinfo=UTC)))["macro_closes"]
    assert out.to_dicts() == [
        {"date": date(2026, 11, 18), "series": "GOLD", "close": 4050.0, "source": "binance:PAXGUSDT"},
        {"date": date(2026, 11, 19), "series": "GOLD", "close": 4051.0, "source": "binance:PAXGUSDT"},
    ]   # the 20 Nov candle is still open at 12:00


# --------------------------------------------------------------------------- providers end to end

def test_providers_against_simulator_land_validate_load_and_replay(tmp_path, monkeypatch):
    from perpwatch import warehouse
    from perpwatch.ingest import pipeline
    from perpwatch.simulator.server import start

    now = datetime(2026, 11, 20, tzinfo=UTC)
    sim = start(port=0, seed=7, now=now)
    try:
        for k, v in sim.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("SOSOVALUE_API_KEY", "sk-never-landed")
        monkeypatch.setenv("STOOQ_API_KEY", "stq-never-landed")
        monkeypatch.setenv("PERPWATCH_ASSETS", "BTC")
        db = tmp_path / "w.duckdb"
        rep = jobs.run(start=now - timedelta(days=20), end=now, db=db, build=False,
                           venues=["farside", "sosovalue", "coingecko", "fred", "stooq"])
    finally:
        sim.stop()
    assert rep.status == "success", rep.errors + rep.warnings
    with warehouse.session(db) as con:
        n = dict(con.execute("""SELECT 'etf', count(*) FROM staging.etf_flows UNION ALL
                                SELECT 'macro', count(DISTINCT series) FROM staging.macro_closes UNION ALL
                                SELECT 'treasury', count(*) FROM staging.treasury_holdings UNION ALL
                                SELECT 'mcap', count(*) FROM staging.market_caps""").fetchall())
        assert n["macro"] == 4 and n["treasury"] > 0 and n["mcap"] > 0 and n["etf"] > 1000
        # the whole Farside history is on one page; the TOTAL rows come from SoSoValue
        assert con.execute("SELECT min(date) FROM staging.etf_flows WHERE source='farside'").fetchone()[0] \
            == date(2024, 1, 11)
        landed = con.execute("SELECT params::VARCHAR, body, encoding FROM raw.payloads").fetchall()
        assert landed and not any(b"never-landed" in p.encode() + warehouse.payload_body(b, e) for p, b, e in landed)
        before = con.execute("SELECT count(*), sum(flow_usd) FROM staging.etf_flows").fetchone()
    replayed = pipeline.replay(db)
    assert replayed.status == "success"
    with warehouse.session(db) as con:
        assert con.execute("SELECT count(*), sum(flow_usd) FROM staging.etf_flows").fetchone() == before
