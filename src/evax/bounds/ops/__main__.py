"""``python -m evax.bounds.ops [--write README.md]``: print the supported-layer list generated
from the op registry, or rewrite the README's block between the ``supported-layers`` markers."""

from __future__ import annotations

import sys
from pathlib import Path

from evax.bounds.ops import load_all
from evax.bounds.ops.registry import supported_markdown

START, END = "<!-- supported-layers:start -->", "<!-- supported-layers:end -->"


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block``."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def main(argv: list[str]) -> int:
    load_all()
    block = supported_markdown()
    if len(argv) == 2 and argv[0] == "--write":
        path = Path(argv[1])
        path.write_text(replace_block(path.read_text(), block))
        return 0
    if argv:
        print("usage: python -m evax.bounds.ops [--write README.md]", file=sys.stderr)
        return 2
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
