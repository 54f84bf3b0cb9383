"""Re-lay out the shipped workflows in place with harness/layout.py, keeping each one's nodes, links,
widget values and note text (for a layout change without re-running every builder).

Run (boots ComfyUI once for the node definitions): cd tests && $FP_PY harness/relayout.py [workflows/*.json]
"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import comfy_host, layout  # noqa: E402
from harness import workflow as wf  # noqa: E402


def relayout(ui, input_types):
    notes = [n for n in ui["nodes"] if n["type"] in ("MarkdownNote", "Note")]
    text = "\n\n".join(str((n.get("widgets_values") or [""])[0]) for n in notes) or None
    ui["nodes"] = [n for n in ui["nodes"] if n not in notes]
    return layout.arrange(ui, input_types, note=text)


def main(paths):
    host = comfy_host.boot(Path(tempfile.mkdtemp(prefix="fp_relayout_")))
    for path in paths or sorted((comfy_host.REPO / "workflows").glob("*.json")):
        ui = wf.load(path)
        if ui.get("groups"):
            print("skipped (has groups: re-run its builder)", path)
            continue
        wf.save(relayout(ui, host.input_types), Path(path))
        print("re-laid out", path)


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
