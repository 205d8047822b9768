#!/usr/bin/env python3
"""Rewrites the "Checked by" lists of docs/RULES.md from the source tree.

A test checks a rule when its name starts with the rule's id (`r4_...`, `x7_...`) or when a
comment right above it (or a Python test's docstring) cites the rule (`R4`, `X7`). Run it after
adding tests: `python3 scripts/rules-index.py`. The integration test `rules` fails when the
lists are out of date, a listed test is gone, or a rule has no test.
"""
import collections
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RULE = re.compile(r"\b([RX])([0-9]{1,2})\b")
SKIP = ("target", ".git", "fuzz", "node_modules")


def valid(kind, n):
    return (kind == "R" and 1 <= n <= 27) or (kind == "X" and 1 <= n <= 8)


def rust_tests(path, rel, cites):
    lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"\s*(?:pub(?:\(crate\))? )?(?:async )?fn ([a-z0-9_]+)\(", line)
        if not m:
            continue
        j, attrs, comments = i - 1, [], []
        while j >= 0 and lines[j].strip().startswith(("#[", "//")):
            s = lines[j].strip()
            (attrs if s.startswith("#[") else comments).append(s)
            j -= 1
        if not any("test" in a for a in attrs):
            continue
        name = m.group(1)
        ids = set()
        own = re.match(r"([rx])([0-9]+)_", name)
        if own:
            ids.add((own.group(1).upper(), int(own.group(2))))
        for c in comments:
            ids.update((k, int(n)) for k, n in RULE.findall(c))
        for k, n in ids:
            if valid(k, n):
                cites[f"{k}{n}"].add((rel, name))


def python_tests(path, rel, cites):
    src = open(path, encoding="utf-8").read()
    for m in re.finditer(r'def (test_[a-z0-9_]+)\([^)]*\)[^:]*:\n(\s+"""(.*?)""")?', src, re.S):
        for k, n in RULE.findall(m.group(2) or ""):
            if valid(k, int(n)):
                cites[f"{k}{int(n)}"].add((rel, m.group(1)))


def index(root):
    cites = collections.defaultdict(set)
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP]
        for f in files:
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            if f.endswith(".rs"):
                rust_tests(path, rel, cites)
            elif f.endswith(".py") and f.startswith("test_"):
                python_tests(path, rel, cites)
    return cites


def render(rule, cites):
    rows = sorted(cites.get(rule, ()))
    out = [f"<!-- checked-by {rule} -->"]
    out += [f"- `{name}` in `{rel}`" for rel, name in rows] or ["- (no test yet)"]
    out.append("<!-- /checked-by -->")
    return "\n".join(out)


def main():
    doc_path = os.path.join(ROOT, "docs", "RULES.md")
    doc = open(doc_path, encoding="utf-8").read()
    cites = index(ROOT)
    new = re.sub(
        r"<!-- checked-by ([RX][0-9]+) -->.*?<!-- /checked-by -->",
        lambda m: render(m.group(1), cites),
        doc,
        flags=re.S,
    )
    if "--check" in sys.argv:
        sys.exit(0 if new == doc else 1)
    open(doc_path, "w", encoding="utf-8").write(new)


if __name__ == "__main__":
    main()
