"""The package's layout as a contract: no import circles, adapters apart, small modules.

Read from the source with ``ast`` (every import counts, ``TYPE_CHECKING`` ones and
those inside functions too), so a change that ties two modules in a loop, makes
one adapter import another, or grows a module past about 600 lines fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "satchel"
#: The modules that adapt satchel to one framework each.
ADAPTERS = {
    "satchel.flask": "flask",
    "satchel._flask_cli": "flask",
    "satchel.flask_login": "flask",
    "satchel.demo.flask": "flask",
    "satchel.asgi": "starlette",
    "satchel.demo.asgi": "starlette",
    "satchel.quart": "quart",
}
FRAMEWORKS = {"flask", "werkzeug", "flask_login", "flask_wtf", "starlette", "fastapi", "quart"}
MOST_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), wherever the import stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    return {
        name: {m for m in imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_module_imports_one_that_imports_it_back() -> None:
    """No import circle in the package, of any length (a package's __init__ aside, which
    only hands on what its modules define)."""
    edges = graph()
    packages = {name for name in edges if (SRC.parent / name.replace(".", "/")).is_dir()}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str], seen: set[str]) -> None:
        for nxt in sorted(edges[node] - packages):
            if nxt in path:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, [*path, nxt], seen)

    for start in sorted(set(edges) - packages):
        visit(start, [start], {start})
    assert not circles, circles[:5]


def test_adapters_never_import_each_other_nor_another_framework() -> None:
    """An adapter imports the core and its own framework only."""
    edges = graph()
    for name, framework in ADAPTERS.items():
        path = SRC.parent / (name.replace(".", "/") + ".py")
        others = {a for a, f in ADAPTERS.items() if f != framework}
        assert not edges[name] & others, (name, edges[name] & others)
        foreign = {m.split(".")[0] for m in imports(path)} & (FRAMEWORKS - {framework})
        if framework == "starlette":
            foreign -= {"fastapi"}  # FastAPI is Starlette
        if framework == "flask":
            foreign -= {"werkzeug", "flask_login", "flask_wtf"}  # Flask's own family
        assert not foreign, (name, foreign)


def test_the_core_imports_no_framework() -> None:
    """Outside the adapters no module imports a web framework at its top level."""
    for path in SRC.rglob("*.py"):
        name = module_name(path)
        if name in ADAPTERS or name.startswith("satchel.demo"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {
            alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0] for node in tree.body
            if isinstance(node, ast.ImportFrom) and not node.level
        }  # fmt: skip
        assert not top & FRAMEWORKS, (name, top & FRAMEWORKS)


def test_no_module_is_over_about_600_lines() -> None:
    """Modules stay small enough to read whole."""
    long = {
        module_name(p): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MOST_LINES
    }
    assert not long, long


def test_importing_the_asgi_adapter_imports_no_flask() -> None:
    """`import satchel.asgi` (and the ASGI demo) loads neither Flask nor Werkzeug."""
    code = (
        "import sys, satchel, satchel.asgi, satchel.demo.asgi, satchel.stores.aio\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug'))\n"
        "print(bad)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr
