"""The shape of ``core/``: no import circle, and no import from a lower layer to a higher one.

Every ``import``/``from ... import`` of a ``core`` module counts, at the top of a file or inside a function
(a lazy import is still a dependency). Layers, lowest first (docs/ARCHITECTURE.md):

    foundation (errors, export, kernels) < sources/quotes/calendar < cleaning/forwards < black
    < surface < arbitrage/localvol < pricing (and the de-Americanisation step) < pipeline/seeds/CLI

A module may import its own layer or lower ones. The demo market (``core.demo``) is a generator: it prices
its quotes off an SSVI surface, so it sits above the surfaces, beside the pricers, not among the sources.
"""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"

#: module-name prefix -> layer; the longest matching prefix wins
LAYERS = {
    "core.errors": 0, "core.export": 0, "core._kernels": 0, "core._black_numba": 0, "core._forwards_numba": 0,
    "core._american_numba": 0, "core.pricing._backward_numba": 0, "core.pricing._backward_numpy": 0,
    "core.calendar": 1, "core.quotes": 1, "core.sources": 1,
    "core.cleaning": 2, "core.forwards": 2,
    "core.black": 3,
    "core.surface": 4,
    "core.arbitrage": 5, "core.localvol": 5,
    "core.pricing": 6, "core.american": 6, "core.demo": 6,
    "core.pipeline": 7, "core.seeds": 7, "core.__main__": 7, "core.pricing.saved": 7, "core.pricing.risk": 7,
}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in CORE.rglob("*.py"):
        name = ".".join(p.relative_to(CORE.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(path: Path, mods) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            if n in mods:
                out.add(n)
                break
    return out


def _layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{name} has no layer: add it to LAYERS (and to docs/ARCHITECTURE.md)"
    return LAYERS[best]


def _graph():
    mods = _modules()
    return {m: _imports(p, mods) - {m} for m, p in mods.items()}


def test_every_core_module_has_a_layer():
    for m in _graph():
        if m not in ("core", "core.surface", "core.pricing", "core.sources"):
            _layer(m)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    bad = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
           for m, deps in _graph().items() if m.count(".") and m not in ("core.surface", "core.pricing", "core.sources")
           for d in deps if d not in ("core", "core.surface", "core.pricing", "core.sources") and _layer(d) > _layer(m)]
    assert not bad, "\n".join(bad)


def test_no_import_circle_in_core():
    g = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(v, stack):
        state[v] = 1
        stack.append(v)
        for w in sorted(g[v]):
            if state.get(w) == 1:
                cycles.append(" -> ".join(stack[stack.index(w):] + [w]))
            elif w not in state:
                visit(w, stack)
        stack.pop()
        state[v] = 2

    for v in sorted(g):
        if v not in state:
            visit(v, [])
    assert not cycles, "import circles:\n" + "\n".join(cycles)
