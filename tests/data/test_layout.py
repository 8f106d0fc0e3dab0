"""Inside ``otface/data`` dependencies point one way too: the shared modules at the top (transforms,
skipping, samplers, text, staging) -> ``formats`` -> ``tools`` -> ``testpacks``."""

import ast
from pathlib import Path

import otface.data

DATA = Path(otface.data.__file__).parent
LEVELS = {"": 0, "formats": 1, "tools": 2, "testpacks": 3}


def level(module: str) -> int:
    """0 for otface.data's own modules, else its subpackage's level."""
    parts = module.split(".")  # otface.data.<module>, otface.data.<subpackage>[.<module>]
    return LEVELS.get(parts[2], 0) if len(parts) > 2 else 0


def test_no_data_module_imports_a_higher_one():
    upward = []
    for path in sorted(DATA.rglob("*.py")):
        src = ".".join(("otface", "data", *path.relative_to(DATA).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("otface.data."):
                if level(node.module) > level(src):
                    upward.append(f"{src}:{node.lineno} imports {node.module}")
    assert not upward, "\n".join(upward)
    assert set(LEVELS) - {""} == {p.name for p in DATA.iterdir() if (p / "__init__.py").exists()}
