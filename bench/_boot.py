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


def alternating_pairs(fns, repeats, setups=None):
    """Time two callables in pairs, the order alternating each round (a b, b a, ...) so drift and
    warm-up hit both alike; returns {name: [seconds per round]}. ``setups[name]()``, untimed, makes the
    arguments of each timed call ``fns[name](*args)``."""
    import time

    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            args = setups[name]() if setups else ()
            t = time.perf_counter()
            fns[name](*args)
            times[name].append(time.perf_counter() - t)
    return times


def pair_ratio_line(times, num, den):
    """'median a .. b .. ratio (median of N pairs) r (pair ratios lo..hi)' for two entries of :func:`alternating_pairs`."""
    import statistics

    ratios = [p / q for p, q in zip(times[num], times[den])]
    med = {k: statistics.median(times[k]) for k in (num, den)}
    return (f"median {den} {med[den]:.3f}s  {num} {med[num]:.3f}s  ratio {num}/{den} (median of {len(ratios)} pairs) "
            f"{statistics.median(ratios):.3f}  (pair ratios {min(ratios):.3f}..{max(ratios):.3f})")
