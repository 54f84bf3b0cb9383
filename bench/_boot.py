"""Shared set-up for bench scripts: boot ComfyUI in-process (CPU unless a GPU is present) with
the pack loaded, in a throw-away base directory."""
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness import comfy_host  # noqa: E402


def boot():
    home = Path(os.environ.get("FP_BENCH_HOME") or tempfile.mkdtemp(prefix="fp_bench_"))
    return comfy_host.boot(home)


def interleaved(fns, repeats):
    """Run each callable ``repeats`` times, interleaved (a, b, a, b, ...) so drift hits all equally;
    returns the median seconds of each."""
    import statistics
    import time

    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}
