"""The high-volume-endpoint fixtures and how a run would request them (tests/test_batch_parse.py).

Each case: (name, source, endpoint, params, fixture path or (fixture path, key into it), instruments).
The reference frames in fixtures/ were written by the per-page parsers before issue 16 (make.py).
"""

from __future__ import annotations

BTC_INV = {("bybit", "BTCUSD"): {"asset": "BTC", "contract_size": 1.0, "multiplier": 1.0, "kind": "perp",
                                 "margin": "inverse"}}
OKX = {("okx", "BTC-USDT-SWAP"): {"asset": "BTC", "contract_size": 0.01, "contract_unit": "base", "margin": "linear",
                                  "kind": "perp"},
       ("okx", "BTC-USD-SWAP"): {"asset": "BTC", "contract_size": 100.0, "contract_unit": "usd", "margin": "inverse",
                                 "kind": "perp"}}
COINM = {("binance_coinm", "BTCUSD_PERP"): {"contract_size": 100.0, "kind": "perp"}}

CASES = [
    ("binance_oi", "binance", "/futures/data/openInterestHist", {"symbol": "BTCUSDT"},
     "binance/futures_data_openInterestHist.json", {}),
    ("binance_oi_real", "binance", "/futures/data/openInterestHist", {"symbol": "BTCUSDT"},
     "binance/futures_data_openInterestHist.real_row.json", {}),
    ("binance_ratio_global", "binance", "/futures/data/globalLongShortAccountRatio", {"symbol": "BTCUSDT"},
     "binance/futures_data_globalLongShortAccountRatio.json", {}),
    ("binance_ratio_top_acc", "binance", "/futures/data/topLongShortAccountRatio", {"symbol": "BTCUSDT"},
     "binance/futures_data_topLongShortAccountRatio.json", {}),
    ("binance_ratio_top_pos", "binance", "/futures/data/topLongShortPositionRatio", {"symbol": "BTCUSDT"},
     "binance/futures_data_topLongShortPositionRatio.json", {}),
    ("binance_funding", "binance", "/fapi/v1/fundingRate", {"symbol": "BTCUSDT"},
     "binance/fapi_v1_fundingRate.json", {}),
    ("binance_klines", "binance", "/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1h"},
     "binance/fapi_v1_klines.json", {}),
    ("binance_spot_klines", "binance", "/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1h"},
     "binance/api_v3_klines.json", {}),
    ("coinm_oi", "binance_coinm", "/futures/data/openInterestHist", {"pair": "BTCUSD"},
     "binance_coinm/dapi_futures_data_openInterestHist.perpetual.simulator.json", COINM),
    ("coinm_funding", "binance_coinm", "/dapi/v1/fundingRate", {"symbol": "BTCUSD_PERP"},
     "binance_coinm/dapi_v1_fundingRate.json", {}),
    ("coinm_klines", "binance_coinm", "/dapi/v1/klines", {"symbol": "BTCUSD_PERP", "interval": "1h"},
     "binance_coinm/dapi_v1_klines.simulator.json", COINM),
    ("coinm_index_klines", "binance_coinm", "/dapi/v1/indexPriceKlines", {"pair": "BTCUSD", "interval": "1h"},
     "binance_coinm/dapi_v1_indexPriceKlines.simulator.json", COINM),
    ("bybit_oi", "bybit", "/v5/market/open-interest", {"category": "linear", "symbol": "BTCUSDT"},
     "bybit/v5_market_open-interest.json", {}),
    ("bybit_ratio", "bybit", "/v5/market/account-ratio", {"category": "linear", "symbol": "BTCUSDT"},
     "bybit/v5_market_account-ratio.json", {}),
    ("bybit_funding", "bybit", "/v5/market/funding/history", {"category": "linear", "symbol": "BTCUSDT"},
     "bybit/v5_market_funding_history.json", {}),
    ("bybit_kline_inverse", "bybit", "/v5/market/kline", {"category": "inverse", "symbol": "BTCUSD", "interval": "60"},
     "bybit/v5_market_kline.inverse.json", BTC_INV),
    ("bybit_mark_kline", "bybit", "/v5/market/mark-price-kline", {"category": "linear", "symbol": "BTCUSDT",
                                                                   "interval": "60"},
     "bybit/v5_market_mark-kline.json", {}),
    ("bybit_index_kline", "bybit", "/v5/market/index-price-kline", {"category": "inverse", "symbol": "BTCUSDZ22",
                                                                     "interval": "60"},
     "bybit/v5_market_index-kline.json", {}),
    ("okx_oi", "okx", "/api/v5/rubik/stat/contracts/open-interest-history",
     {"instId": "BTC-USDT-SWAP", "period": "1H"}, "okx/api_v5_rubik_stat_contracts_open-interest-history.json", {}),
    ("okx_funding", "okx", "/api/v5/public/funding-rate-history", {"instId": "BTC-USD-SWAP"},
     "okx/api_v5_public_funding-rate-history.json", OKX),
    ("okx_ratio_top_acc", "okx", "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract-top-trader",
     {"instId": "BTC-USDT-SWAP", "period": "1H"},
     "okx/api_v5_rubik_stat_contracts_long-short-account-ratio-contract-top-trader.json", OKX),
    ("okx_ratio_top_pos", "okx", "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader",
     {"instId": "BTC-USDT-SWAP", "period": "1H"},
     "okx/api_v5_rubik_stat_contracts_long-short-position-ratio-contract-top-trader.json", OKX),
    ("okx_ratio_acc", "okx", "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract",
     {"instId": "BTC-USDT-SWAP", "period": "1H"},
     "okx/api_v5_rubik_stat_contracts_long-short-account-ratio-contract.json", OKX),
    ("okx_candles", "okx", "/api/v5/market/candles", {"instId": "BTC-USDT-SWAP", "bar": "1H"},
     "okx/api_v5_market_candles.json", OKX),
    ("okx_history_candles", "okx", "/api/v5/market/history-candles", {"instId": "BTC-USD-SWAP", "bar": "1H"},
     "okx/api_v5_market_history-candles.json", OKX),
    ("hl_funding", "hyperliquid", "/info", ("hyperliquid/info_fundingHistory.request.json", "request"),
     "hyperliquid/info_fundingHistory.json", {}),
    ("hl_funding_switch", "hyperliquid", "/info", {"type": "fundingHistory", "coin": "BTC"},
     "hyperliquid/info_fundingHistory.excerpt_8h_to_1h_switch.json", {}),
    ("hl_candles", "hyperliquid", "/info", ("hyperliquid/info_candleSnapshot.request.json", "request"),
     "hyperliquid/info_candleSnapshot.json", {}),
    ("deribit_funding", "deribit", "/api/v2/public/get_funding_rate_history",
     {"instrument_name": "BTC-PERPETUAL"}, "deribit/public_get_funding_rate_history.json", {}),
    ("deribit_book", "deribit", "/api/v2/public/get_book_summary_by_currency", {"currency": "BTC", "kind": "future"},
     "deribit/public_get_book_summary_by_currency.future.json", {}),
]


def params_of(params, load):
    if isinstance(params, tuple):
        path, key = params
        return load(path)[key]
    return params
