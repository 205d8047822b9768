#!/usr/bin/env python3
"""Import circles between the top-level modules of Tally crates (docs/ARCHITECTURE.md).

    scripts/module-circles.py crates/tally-authority crates/tally-store ...

For each crate, every file of a top-level module (`src/NAME.rs` and `src/NAME/**`) is read
without comments and without its `#[cfg(test)]` part, and each `crate::NAME` path (also inside
`use crate::{a, b::c}` groups, and through the crate root's `pub use NAME::...` re-exports) is
an edge to module NAME. Modules the root declares under `#[cfg(test)]` are left out. Prints
each circle (a strongly connected set of modules) with one place per edge; exits 1 if any.
"""

import re
import sys
from pathlib import Path


def strip(text: str) -> str:
    """The text without comments and without the `#[cfg(test)]` module at its end."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = "\n".join(re.sub(r"//.*", "", line) for line in text.splitlines())
    cut = re.search(r"#\[cfg\((all\()?test[,)].*?\]\s*mod\s+\w+\s*\{", text, flags=re.S)
    return text[: cut.start()] if cut else text


def group_names(body: str):
    """Top-level names in the inside of a `crate::{...}` group."""
    depth, name, names = 0, "", []
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            names.append(name)
            name = ""
            continue
        if depth == 0:
            name += ch
    names.append(name)
    return [n.strip().split("::")[0].strip() for n in names if n.strip()]


def crate_graph(crate: Path):
    src = crate / "src"
    root = src / "lib.rs" if (src / "lib.rs").exists() else src / "main.rs"
    root_text = root.read_text()
    test_only = set(re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", root_text))
    modules = {}
    for p in src.iterdir():
        name = p.stem if p.suffix == ".rs" else p.name
        if p == root or name in test_only or name == "main":
            continue
        if p.is_dir() or p.suffix == ".rs":
            modules.setdefault(name, []).extend(
                sorted(p.rglob("*.rs")) if p.is_dir() else [p]
            )
    # `pub use module::Item` in the root: `crate::Item` is an edge to `module`.
    reexport = {}
    for m, body in re.findall(r"pub use (\w+)::(\{[^;]*\}|[^;]*);", strip(root_text)):
        for item in re.findall(r"\b(\w+)\b", body):
            reexport.setdefault(item, m)
    edges = {}
    for name, files in modules.items():
        for f in files:
            if f.name == "tests.rs" or f.stem.endswith("_tests"):
                continue
            text = strip(f.read_text())
            targets = []
            for m in re.finditer(r"crate::(\{|\w+)", text):
                if m.group(1) == "{":
                    depth, i = 1, m.end()
                    while i < len(text) and depth:
                        depth += {"{": 1, "}": -1}.get(text[i], 0)
                        i += 1
                    targets += group_names(text[m.end() : i - 1])
                else:
                    targets.append(m.group(1))
            for t in targets:
                t = t if t in modules else reexport.get(t)
                if t and t != name and t in modules:
                    edges.setdefault((name, t), f.relative_to(crate))
    return modules, edges


def circles(modules, edges):
    """Strongly connected sets of more than one module (Tarjan)."""
    succ = {m: sorted(t for (s, t) in edges if s == m) for m in modules}
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def main(args):
    found = False
    for arg in args:
        crate = Path(arg)
        modules, edges = crate_graph(crate)
        found_here = circles(modules, edges)
        if not found_here:
            print(f"{crate.name}: {len(modules)} modules, {len(edges)} edges, no circle")
        for comp in found_here:
            found = True
            print(f"{crate.name}: circle among {', '.join(comp)}")
            for (s, t), where in sorted(edges.items()):
                if s in comp and t in comp:
                    print(f"  {s} -> {t} ({where})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
