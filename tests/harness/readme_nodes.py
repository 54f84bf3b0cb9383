"""Regenerate the README's node table from the registered nodes (ID, display name, category,
first sentence of DESCRIPTION).  Run inside the host venv:  python tests/harness/readme_nodes.py"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import comfy_host  # noqa: E402

BEGIN, END = "<!-- NODES -->", "<!-- /NODES -->"


def table(mappings, display):
    rows = ["| node ID | display name | category | what it does |", "|---|---|---|---|"]
    for node_id, cls in sorted(mappings.items(), key=lambda kv: (kv[1].CATEGORY, kv[0])):
        desc = " ".join(getattr(cls, "DESCRIPTION", "").split())
        first = desc.split(". ")[0].rstrip(".") + "." if desc else ""
        cat = cls.CATEGORY.split("/", 1)[-1]
        rows.append(f"| `{node_id}` | {display.get(node_id, node_id)} | {cat} | {first.replace('|', '/')} |")
    return "\n".join(rows)


def main():
    host = comfy_host.boot(Path(tempfile.mkdtemp(prefix="fp_readme_")))
    readme = comfy_host.REPO / "README.md"
    text = readme.read_text()
    block = f"{BEGIN}\n{table(host.pack.NODE_CLASS_MAPPINGS, host.pack.NODE_DISPLAY_NAME_MAPPINGS)}\n{END}"
    if END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + block + text[end:]
    else:
        text = text.replace(BEGIN, block)
    readme.write_text(text)
    print(f"README node table: {len(host.pack.NODE_CLASS_MAPPINGS)} nodes")


if __name__ == "__main__":
    main()
