#!/usr/bin/env python3
"""The import graph between quay-authz's own modules, and its cycles.

    scripts/dev/module_graph.py            # prints the graph; exit 1 if there is a cycle
    scripts/dev/module_graph.py --dot      # the graph in Graphviz dot

A module is a top-level item of the library (`src/<name>.rs` or `src/<name>/`); an edge
A -> B means some file of A names `crate::B` (in a `use`, a path, or a `pub use`). Tests
(`#[cfg(test)] mod tests { … }` blocks) are left out: a test may reach anywhere. Comments and
string literals are stripped first, so prose that mentions `crate::x` is no edge.

Why a script and not a crate: it needs no build, runs in a second, and reads the same text a
reviewer reads. `scripts/test.sh` runs it, so a cycle that comes back fails the suite.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src")


def strip_comments_and_strings(text):
    # Raw strings, ordinary strings, char literals, then comments.
    text = re.sub(r'r(#*)"(?:.|\n)*?"\1', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"'(?:\\.|[^'\\\n])'", "' '", text)
    text = re.sub(r"/\*(?:.|\n)*?\*/", "", text)
    text = re.sub(r"//[^\n]*", "", text)
    return text


def strip_test_modules(text):
    """Removes `#[cfg(test)] mod name { … }` blocks (brace-matched)."""
    out = []
    i = 0
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(?:pub\s+)?mod\s+\w+\s*\{")
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        depth = 1
        j = m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j


def top_modules():
    mods = {}
    for entry in sorted(os.listdir(ROOT)):
        path = os.path.join(ROOT, entry)
        if entry in ("lib.rs", "main.rs", "bin"):
            continue
        if entry.endswith(".rs"):
            mods[entry[:-3]] = [path]
        elif os.path.isdir(path):
            files = []
            for dirpath, _, names in os.walk(path):
                files += [os.path.join(dirpath, n) for n in names if n.endswith(".rs")]
            mods[entry] = sorted(files)
    return mods


def graph():
    mods = top_modules()
    edges = {name: set() for name in mods}
    ref = re.compile(r"\bcrate::(\w+)")
    group = re.compile(r"\bcrate::\{([^}]*)\}")
    for name, files in mods.items():
        for path in files:
            with open(path, encoding="utf-8") as f:
                text = strip_test_modules(strip_comments_and_strings(f.read()))
            targets = set(ref.findall(text))
            for inner in group.findall(text):
                targets |= {part.strip().split("::")[0] for part in inner.split(",") if part.strip()}
            edges[name] |= {t for t in targets if t in mods and t != name}
    return edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    edges = graph()
    if "--dot" in sys.argv:
        print("digraph modules {")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f'  "{a}" -> "{b}";')
        print("}")
        return 0
    for a in sorted(edges):
        print(f"{a} -> {', '.join(sorted(edges[a])) or '(nothing of ours)'}")
    found = cycles(edges)
    if not found:
        print("no import cycles between modules")
        return 0
    for component in found:
        pairs = [f"{a} -> {b}" for a in component for b in sorted(edges[a]) if b in component]
        print(f"CYCLE among {', '.join(component)}: {'; '.join(pairs)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
