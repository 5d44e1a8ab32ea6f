#!/usr/bin/env python3
"""The import graph between quay-authz's own modules, and its cycles.

    scripts/dev/module_graph.py            # prints the graph; exit 1 if there is a cycle
    scripts/dev/module_graph.py --dot      # the graph in Graphviz dot
    scripts/dev/module_graph.py --self-test   # the checker on a scratch tree with known cycles

A module is a top-level item of the library (`src/<name>.rs` or `src/<name>/`), or one of the
submodules in OWN_NODES (`config::raw`); an edge A -> B means some file of A names `crate::B`
(in a `use`, a path, or a `pub use`). Besides cycles it checks the layout's promises (ONLY,
FORBIDDEN): `model` and `config::raw` import nothing of ours, `policy` sees only those two,
`authn` knows no rules, `route` no identity or policy, `check` never calls `server`,
nothing but `dev` itself reaches `dev`, and only `server` and `cli` reach `exchange`. Tests
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
    """Blanks out comments, string and char literals with a small scanner (regexes trip over
    `'"'` and nested comments), keeping everything else, lifetimes included."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")) or (
            c == "b" and re.match(r'br#*"', text[i:]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_"))
        ):
            m = re.match(r'b?r(#*)"', text[i:])
            close = '"' + m.group(1)
            j = text.find(close, i + m.end())
            out.append('""')
            i = n if j < 0 else j + len(close)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
        elif c == "'":
            m = re.match(r"'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


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


# Submodules that are nodes of their own: a contract other stages read without depending on
# the rest of their parent (`policy` reads `config::raw`; `config` compiles rules with `policy`).
OWN_NODES = {
    "config::raw": "config/raw.rs",
    "bridge::keys": "bridge/keys.rs",
    "bridge::template": "bridge/template.rs",
}

# What the layout promises (README, "Layout"; STYLE.md): module -> the only modules of ours it
# may import (None: any, subject to FORBIDDEN and to having no cycle).
ONLY = {
    "model": set(),
    "config::raw": set(),
    "bridge::keys": set(),
    "bridge::template": set(),
    "tls": set(),
    "metrics": set(),
    "route": {"model"},
    "policy": {"model", "config::raw"},
}
# module -> modules it must never import.
FORBIDDEN = {
    "authn": {"policy", "check", "server", "dev"},
    "jwks": {"policy", "check", "server", "dev"},
    "check": {"server", "dev"},
    "config": {"check", "server", "dev", "authn"},
    "server": {"dev"},
}


def self_test():
    """The checker checked: a scratch tree with a cycle, a broken rule, and imports hidden in
    comments, strings and test modules must give exactly the expected findings."""
    import tempfile

    global ROOT
    saved = ROOT
    with tempfile.TemporaryDirectory() as scratch:
        files = {
            "lib.rs": "pub mod a; pub mod b; pub mod model; pub mod policy;",
            "a.rs": "use crate::b::Thing;\n// crate::policy in a comment\nconst S: &str = \"crate::policy\";",
            "b.rs": "pub struct Thing;\nfn f() { crate::a::g(); }\n#[cfg(test)]\nmod tests { use crate::policy; }",
            "model/mod.rs": "use crate::policy::Rule; const C: char = '\"';",
            "policy/mod.rs": "use crate::model::Grant;",
        }
        for name, text in files.items():
            path = os.path.join(scratch, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        ROOT = scratch
        try:
            edges = graph()
        finally:
            ROOT = saved
    expected = {"a": {"b"}, "b": {"a"}, "model": {"policy"}, "policy": {"model"}}
    assert edges == expected, edges
    assert sorted(map(sorted, cycles(edges))) == [["a", "b"], ["model", "policy"]], cycles(edges)
    assert any("model may import only" in p for p in broken_promises(edges)), broken_promises(edges)
    print("module_graph self-test: cycles, rules and hidden imports found as expected")


def top_modules():
    """node -> its files. A node is a top-level module (`src/<name>.rs` or `src/<name>/`),
    except the submodules of OWN_NODES, which are nodes of their own."""
    mods = {}
    own_files = {os.path.join(ROOT, path): node for node, path in OWN_NODES.items()}
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
            mods[entry] = sorted(f for f in files if f not in own_files)
    for file, node in own_files.items():
        if os.path.exists(file):
            mods[node] = [file]
    return mods


def node_of(path_segments, mods):
    """The node a path `crate::a::b::…` names: `a::b` when that is a node of its own."""
    if len(path_segments) > 1 and "::".join(path_segments[:2]) in mods:
        return "::".join(path_segments[:2])
    return path_segments[0] if path_segments[0] in mods else None


def graph():
    mods = top_modules()
    edges = {name: set() for name in mods}
    # crate::a::b, crate::a::{b, c}, crate::{a, b}
    path = re.compile(r"\bcrate::((?:\w+::)*\w+)(?:::\{([^}]*)\})?")
    top_group = re.compile(r"\bcrate::\{([^}]*)\}")
    for name, files in mods.items():
        parent = name.split("::")[0]
        for file in files:
            with open(file, encoding="utf-8") as f:
                text = strip_test_modules(strip_comments_and_strings(f.read()))
            if name == "cli":
                # The binary's own modules reach the library as `quay_authz::…`.
                text = re.sub(r"\bquay_authz::", "crate::", text)
            targets = set()
            for m in path.finditer(text):
                segments = m.group(1).split("::")
                targets.add(node_of(segments, mods))
                for item in (m.group(2) or "").split(","):
                    item = item.strip().split("::")[0].split(" ")[0]
                    if item and item != "self":
                        targets.add(node_of(segments + [item], mods))
            for inner in top_group.findall(text):
                for item in inner.split(","):
                    item = item.strip()
                    if item:
                        targets.add(node_of(item.split("::"), mods))
            # Inside a folder module, `super::x` and a bare `raw::…` reach siblings.
            if "::" in name and re.search(r"\bsuper::", text):
                targets.add(parent)
            for node in mods:
                if node.startswith(parent + "::") and node != name:
                    child = node.split("::", 1)[1]
                    if re.search(r"\b(?:self::|super::)?" + child + r"::", text):
                        targets.add(node)
            edges[name] |= {t for t in targets if t and t != name}
    return edges


def broken_promises(edges):
    out = []
    for name, allowed in ONLY.items():
        for target in sorted(edges.get(name, set()) - allowed):
            out.append(f"{name} may import only {sorted(allowed) or 'nothing of ours'}, but imports {target}")
    for name, never in FORBIDDEN.items():
        for target in sorted(edges.get(name, set()) & never):
            out.append(f"{name} must never import {target}")
    # `cli` (the binary's edge) reaches `dev` for the dev-issuer and dev-upstream commands,
    # and only behind the `dev` feature; the library's serving path never does.
    for name in sorted(edges):
        if name not in ("dev", "cli") and "dev" in edges[name]:
            out.append(f"{name} imports dev: the serving path must not reach development tooling")
    # Token exchange is an endpoint: `server` serves it (and `cli` may drive it); no layer
    # of the Check reaches it.
    for name in sorted(edges):
        if name not in ("exchange", "server", "cli", "dev") and "exchange" in edges[name]:
            out.append(f"{name} imports exchange: only server (and cli) may")
    return out


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
    if "--self-test" in sys.argv:
        self_test()
        return 0
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
    for component in found:
        pairs = [f"{a} -> {b}" for a in component for b in sorted(edges[a]) if b in component]
        print(f"CYCLE among {', '.join(component)}: {'; '.join(pairs)}")
    promises = broken_promises(edges)
    for promise in promises:
        print(f"LAYOUT: {promise}")
    if found or promises:
        return 1
    print("no import cycles between modules; every layout rule holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
