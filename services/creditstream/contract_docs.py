"""Generate (or check) docs/contract/*.schema.json from `creditstream.contract`.

`python -m creditstream.contract_docs --write` regenerates; `--check` fails on drift (make lint).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from creditstream.contract import message_json_schema, record_json_schema
from creditstream.settings import REPO_ROOT

CONTRACT_DIR = REPO_ROOT / "docs" / "contract"


def generated_documents() -> dict[str, dict[str, Any]]:
    """File name → JSON document of every generated contract file."""
    return {
        "record.schema.json": record_json_schema(),
        "request.schema.json": message_json_schema(),
    }


def render(document: dict[str, Any]) -> str:
    """Stable text form (sorted by insertion, 2-space indent, trailing newline)."""
    return json.dumps(document, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write or check the generated contract files."""
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the files")
    mode.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, document in generated_documents().items():
        path: Path = CONTRACT_DIR / name
        text = render(document)
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(str(path))
    if stale:
        print("out of date (run `make contract-docs`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
