"""The floors of the design hold: protocol imports neither side, agent and centre never import each
other, and no route module imports the module that registers it (an import circle).

Read from the source with ``ast`` (every import, also those inside functions), so a lazy import
that hides a circle is found as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(package: str) -> dict[str, set[str]]:
    """module name → the absolute names it imports (relative imports resolved)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        is_package = path.name == "__init__.py"
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join([*base, node.module] if node.module else base)
                else:
                    prefix = node.module or ""
                names.add(prefix)
                names.update(f"{prefix}.{a.name}" for a in node.names)
        out[module] = names
    return out


def _uses(names: set[str], target: str) -> bool:
    return any(n == target or n.startswith(target + ".") for n in names)


@pytest.mark.parametrize("package", ["protocol", "agent", "central"])
def test_the_floors(package: str) -> None:
    forbidden = {"protocol": ("agent", "central"), "agent": ("central",), "central": ("agent",)}[package]
    bad = {m: sorted(n for n in names if any(_uses({n}, f) for f in forbidden))
           for m, names in imports(package).items()}  # fmt: skip
    assert {m: n for m, n in bad.items() if n} == {}


#: The modules allowed to import a package's ``api``: those that run it (entry points), not routes.
_RUNNERS = {"central": {"central", "central.cli"}, "agent": {"agent", "agent.cli", "agent.service"}}


def test_no_central_module_imports_the_api_that_registers_it() -> None:
    users = {
        m for m, names in imports("central").items() if _uses(names, "central.api") and m != "central.api"
    }
    assert users <= _RUNNERS["central"], sorted(users - _RUNNERS["central"])


def test_no_agent_module_imports_the_api_that_registers_it() -> None:
    users = {m for m, names in imports("agent").items() if _uses(names, "agent.api") and m != "agent.api"}
    assert users <= _RUNNERS["agent"], sorted(users - _RUNNERS["agent"])
