"""The package's shape: imports flow one way, the peel's options live in one place, and the peel
module does not pull in the file application."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import tfdeblend
from tfdeblend.peel_config import PeelConfig

ROOT = Path(tfdeblend.__file__).resolve().parents[1]
PACKAGES = {"tfdeblend": ROOT / "tfdeblend", "tfdeblend.cli": ROOT / "cli"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every tfdeblend module ``name`` imports, at module level or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1],
                                 *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target not in ("tfdeblend", name):
                out.add(target)
    return out


def test_no_two_modules_import_each_other():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles
    # the peel knows nothing of exports, files or evaluation; the export nothing of files
    assert not graph["tfdeblend.deblend"] & {
        "tfdeblend.export", "tfdeblend.run", "tfdeblend.fitsio", "tfdeblend.evaluate"
    }
    assert "tfdeblend.run" not in graph["tfdeblend.export"]
    assert not any(m.startswith("tfdeblend.cli") for n, deps in graph.items()
                   if not n.startswith("tfdeblend.cli") for m in deps)


def test_importing_the_peel_does_not_import_the_file_application():
    code = "import sys, tfdeblend.deblend; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    loaded = set(done.stdout.split())
    assert "tfdeblend.deblend" in loaded
    assert not loaded & {"tfdeblend.run", "tfdeblend.fitsio", "tfdeblend.export",
                         "tfdeblend.evaluate", "astropy.io.fits"}


def test_each_peel_option_lives_in_the_config_and_the_peel_only():
    """Adding a step after the peel touches the peel module and its config: no other module
    (the export, the FITS writer, the file application, the CLI) names a peel option."""
    home = {ROOT / "tfdeblend" / "peel_config.py", ROOT / "tfdeblend" / "deblend.py"}
    names = [f.name for f in dataclasses.fields(PeelConfig) if f.name != "split"]  # a common word
    for path in _modules().values():
        if path in home:
            continue
        text = path.read_text()
        for option in names:
            assert option not in text, f"{path.relative_to(ROOT)} names {option}"
