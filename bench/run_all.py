"""Run every bench script in this folder, one after another, each printing its own
side-by-side ratios.  python bench/run_all.py [--quick]"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK_ARGS = {"bench_import.py": ["--repeats", "2"], "bench_sampling.py": ["--repeats", "1", "--steps", "2"]}


def main():
    quick = "--quick" in sys.argv[1:]
    status = 0
    for script in sorted(HERE.glob("bench_*.py")):
        args = QUICK_ARGS.get(script.name, ["--quick"]) if quick else []
        print(f"== {script.name} {' '.join(args)}", flush=True)
        status |= subprocess.call([sys.executable, str(script), *args], cwd=HERE)
    return status


if __name__ == "__main__":
    sys.exit(main())
