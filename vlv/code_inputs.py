"""The source files a module runs: itself, every ``vlv`` module it imports (transitively, imports
inside functions too) and the packages' ``__init__.py`` on the way. The rules list them as inputs,
so that editing any of them reruns the stage; the list follows the imports, never a hand-kept one.

Example:
    python -m vlv.code_inputs vlv.stages.distill_stage1
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent


def _file(module: str) -> Path | None:
    """The file of a ``vlv`` module or package, or None when the name is not one (an attribute)."""
    rel = Path(*module.split("."))
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[str]:
    """The ``vlv`` names an ``import`` or ``from ... import`` in ``path`` may load (relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # a submodule, if it is one
    return {n for n in names if n == "vlv" or n.startswith("vlv.")}


@cache
def module_files(module: str) -> tuple[str, ...]:
    """Every source file ``module`` runs, relative to the repository root, sorted."""
    if _file(module) is None:
        raise ValueError(f"no module {module} under {PACKAGE_DIR}")
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way run their __init__ first
            f = _file(".".join(parts[:i]))
            if f is not None and f not in seen:
                seen.add(f)
                todo.extend(_imported(f))
    return tuple(sorted(str(f.relative_to(ROOT)) for f in seen))


def main(argv=None) -> int:
    for module in (argv if argv is not None else sys.argv[1:]) or ["vlv.stages.distill_stage1"]:
        print("\n".join(module_files(module)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
