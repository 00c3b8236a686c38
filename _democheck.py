import os, tempfile
from simulator.server import start
sim = start(port=0, seed=7)
os.environ.update(sim.env()); os.environ["PERPWATCH_PROVIDERS"]=""
from perpwatch.collector import collect
d = tempfile.mkdtemp()
try:
    cap = collect(db=d+"/w.duckdb", seconds=15, flush_every_s=2, assets=["BTC","ETH","SOL"], progress=lambda m: None)
    print(cap.status, dict(cap.messages), cap.loaded, cap.warnings[:3])
finally:
    sim.stop()
