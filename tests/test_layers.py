"""Dependencies point one way: core -> ot -> models / heads / losses -> data / synth -> eval -> train -> cli.

Every ``import otface...`` of every module (at the top or inside a function) is read from the
source; an import of a higher layer, or subpackages of one layer importing each other both ways,
fails with the offending lines."""

import ast
from pathlib import Path

import otface

PACKAGE = Path(otface.__file__).parent
LAYERS = {"ot": 1, "models": 2, "heads": 2, "losses": 2, "data": 3, "synth": 3, "eval": 4, "train": 5, "cli": 6,
          "__main__": 6}
CORE = 0  # otface/*.py modules not listed: errors, files, registry, progress, logs, parallel, options, batches,
#          normalize, config, checkpoint


def unit(module: str) -> str:
    """The subpackage (or top-level module) a dotted otface module name belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports() -> list[tuple[str, str, int]]:
    """(importing module, imported otface module, line) of every otface import in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("otface", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] if node.module.startswith("otface") else []
                if node.module == "otface":
                    names = [f"otface.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("otface")]
            else:
                continue
            found += [(module, name, node.lineno) for name in names]
    return found


def test_no_module_imports_a_higher_layer():
    upward = [f"{src}:{line} imports {dst}" for src, dst, line in imports()
              if LAYERS.get(unit(dst), CORE) > LAYERS.get(unit(src), CORE)]
    assert not upward, "\n".join(upward)


def test_no_two_subpackages_import_each_other():
    edges = {(unit(src), unit(dst)) for src, dst, _ in imports() if unit(src) != unit(dst)}
    both_ways = sorted({tuple(sorted(edge)) for edge in edges if edge[::-1] in edges})
    assert not both_ways, both_ways


def test_the_check_sees_the_imports():
    found = imports()
    assert ("otface.train.trainer", "otface.heads.partial_fc") in {(s, d) for s, d, _ in found}
    assert any(src == "otface.cli" and dst.startswith("otface.train") for src, dst, _ in found)  # in functions


def test_no_source_file_is_over_500_lines():
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 500}
    assert not long, f"split these modules: {long}"
