"""Start-up cost of the pack, measured side by side in fresh interpreters:
ComfyUI's node initialisation without the pack vs with the pack (same process recipe), and the
pack's own import time. Target: the pack adds <= 0.3 s.

    python bench/bench_import.py [--repeats 5]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import asyncio, json, sys, time
sys.path.insert(0, {tests!r})
from harness import comfy_host
from pathlib import Path
home = comfy_host.setup_home(Path({home!r}))
root = comfy_host.comfy_dir(); sys.path.insert(0, str(root))
from comfy.cli_args import args
args.cpu = True; args.base_directory = str(home)
import folder_paths, utils.extra_config, nodes
asyncio.run(nodes.init_public_apis()); asyncio.run(nodes.init_builtin_extra_nodes())
t = time.perf_counter()
if {with_pack}:
    ok = asyncio.run(nodes.load_custom_node(str(home / "custom_nodes" / comfy_host.PACK_MODULE)))
    assert ok
print(json.dumps({{"pack_s": time.perf_counter() - t}}))
"""


def run_child(with_pack, home):
    code = CHILD.format(tests=str(REPO / "tests"), home=str(home), with_pack=with_pack)
    import time

    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    total = time.perf_counter() - t
    return total, json.loads(out.stdout.strip().splitlines()[-1])["pack_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    opts = ap.parse_args()
    home = tempfile.mkdtemp(prefix="fp_bench_import_")
    run_child(True, home)  # warm the OS file cache and __pycache__
    base, withp, pack = [], [], []
    for _ in range(opts.repeats):
        base.append(run_child(False, home)[0])
        total, pack_s = run_child(True, home)
        withp.append(total)
        pack.append(pack_s)
    b, w, p = statistics.median(base), statistics.median(withp), statistics.median(pack)
    print(f"ComfyUI node init without pack: {b:.2f} s (median of {opts.repeats})")
    print(f"ComfyUI node init with pack:    {w:.2f} s  -> ratio {w / b:.3f}x")
    print(f"pack load (load_custom_node):   {p * 1000:.0f} ms  (target <= 300 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
