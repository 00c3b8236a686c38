"""Superset configuration for `make bi` (loaded through SUPERSET_CONFIG_PATH by bi/superset.py).

Everything Superset keeps lives under PERPWATCH_BI_HOME (default data/bi): the SQLite metadata
database and the generated secret key. Served on loopback only, by bi/superset.py.
"""

import os
from pathlib import Path

_home = Path(os.environ.get("PERPWATCH_BI_HOME", "data/bi")).resolve()
_home.mkdir(parents=True, exist_ok=True)

SECRET_KEY = (_home / "secret_key").read_text().strip()   # written once, 0600, by bi/superset.py
SQLALCHEMY_DATABASE_URI = f"sqlite:///{_home / 'superset.db'}?check_same_thread=false"

# Chart data is never cached: every query opens a fresh read-only DuckDB connection (NullPool),
# so the serving snapshot swapped in by warehouse.publish() shows on the next refresh.
DATA_CACHE_CONFIG = {"CACHE_TYPE": "NullCache"}
CACHE_CONFIG = {"CACHE_TYPE": "NullCache"}
# Rate limiting and the thumbnail/report workers need Redis/Celery: off for a local install.
RATELIMIT_ENABLED = False
RATELIMIT_STORAGE_URI = "memory://"
THUMBNAIL_SELENIUM_USER = None
FEATURE_FLAGS = {"DASHBOARD_NATIVE_FILTERS": True, "ALERT_REPORTS": False, "THUMBNAILS": False}
# Local HTTP on loopback: no HTTPS redirect or secure-only cookies.
TALISMAN_ENABLED = False
SESSION_COOKIE_SECURE = False
WTF_CSRF_ENABLED = True
# Demo-sized marts: a row limit well above any chart here.
ROW_LIMIT = 50000
SUPERSET_WEBSERVER_TIMEOUT = 120
