"""bench/bench_attention.py --quick runs (no timing asserts: it measures, the report quotes it)."""
import importlib.util
import math
from pathlib import Path


def test_bench_quick_runs(comfy):
    """Smoke test: it runs end to end (the numerical oracles live in the method tests)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "bench_attention.py"
    spec = importlib.util.spec_from_file_location("fp_bench_attention", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    lines = []
    res = mod.run(quick=True, repeats=1, latent=8, device="cpu", log=lines.append)
    assert res["kind"] == "sd15" and set(res["median_s"]) == {"unpatched", "rca", "sca"}
    assert all(math.isfinite(res[k]) and res[k] > 0 for k in ("ratio_rca", "ratio_sca"))
    assert any("ratio RCA/unpatched" in l for l in lines)
