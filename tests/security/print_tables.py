"""Prints the closing-note tables of the hardening issue as markdown: the attack list with results (every
crafted checkpoint of test_pickle_attacks.py in both containers, through its loader node in a real
in-process ComfyUI graph) and the node x bad-input matrix of test_bad_inputs.py (every node of the
registry). Run from the repo root in the host venv:  /work/bin/fplock $FP_PY tests/security/print_tables.py
(the same checks run as tests: security/test_pickle_attacks.py, security/test_bad_inputs.py)."""
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from harness import comfy_host  # noqa: E402


def main():
    home = comfy_host.setup_home(Path(tempfile.mkdtemp(prefix="fp_security_tables_")))
    host = comfy_host.boot(home)
    from fixtures import tiny

    from harness.provision import link

    def install(kind, folder):
        src = tiny.ensure(kind)
        link(src, home / "models" / folder / src.name)
        return src.name

    import test_bad_inputs as bad
    import test_pickle_attacks as atk

    known = atk.known_loader(host, home, install)
    scratch = Path(tempfile.mkdtemp(prefix="fp_attack_scratch_"))
    print("### Attacks (crafted checkpoints through the loader node in a real graph)\n")
    print("| attack | loader | container | result | message (start) |\n|---|---|---|---|---|")
    bad_count = 0
    for name in sorted(atk.ATTACKS):
        for container in sorted(atk.WRITERS):
            problems, msg = atk.attack_outcome(host, home, known, name, container, scratch)
            bad_count += bool(problems)
            result = "refused, process unchanged" if not problems else "FAIL: " + "; ".join(problems)
            short = msg.split(" (nothing in it")[0].replace("|", "/")[:110]
            print(f"| {name} | {atk.ATTACKS[name][0]} | {container} | {result} | {short} |")
    print(f"\n{len(atk.ATTACKS) * len(atk.WRITERS)} placements, {bad_count} failed. Unchanged = the known official "
          "mapper reloads bit-identically, torch's rebuild helpers/dtypes/storages and OrderedDict keep their "
          "attributes, no file created in the ComfyUI home or the scratch folder.\n")
    classes = dict(host.pack.NODE_CLASS_MAPPINGS)
    matrix, failures = bad.bad_input_matrix(classes, dict(host.pack.NODE_DISPLAY_NAME_MAPPINGS), host.pack.nodes._validate)
    print("### Node x bad-input matrix\n")
    print(bad.matrix_markdown(matrix))
    for f in failures:
        print("FAIL", f)
    return 1 if (bad_count or failures) else 0


if __name__ == "__main__":
    sys.exit(main())
