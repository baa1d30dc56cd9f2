"""The README as a reader follows it: its layout names the code that exists, and its commands
run as written on a fresh clone after `make install` or `make serve`."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _layout() -> str:
    section = README.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def test_the_layout_names_every_module() -> None:
    layout = _layout()
    modules = [
        path
        for folder in ("app", "app/core", "training")
        for path in sorted((ROOT / folder).glob("*.py"))
        if path.name != "__init__.py"
    ]
    assert modules
    missing = [
        str(path.relative_to(ROOT))
        for path in modules
        if not re.search(rf"(?m)^\s+{re.escape(path.name)}\s", layout)
    ]
    assert not missing, f"modules the README's Layout does not name: {missing}"
