"""(Copied from the team's shared tools so CI needs nothing outside the repo.)
Module cycles inside each crate of a Rust workspace. Run from its root:
`python3 ci/module_cycles.py .`. Nodes are the top-level modules of
<crate>/src; an edge A -> B when a file of A names `crate::B` (comments excluded).
Prints each cycle (a strongly connected component of 2+ modules) as
`crate: a, b, c`; exits 1 if there is any."""
import os, re, sys
from collections import defaultdict

root = sys.argv[1] if len(sys.argv) > 1 else "."
found = 0
for crate in sorted(os.listdir(root)):
    src = os.path.join(root, crate, "src")
    if crate.startswith(".") or not os.path.isdir(src):
        continue
    edges = defaultdict(set)
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)
            top = rel.split(os.sep)[0]
            mod = top[:-3] if top.endswith(".rs") else top
            if mod in ("lib", "main"):
                continue
            text = open(os.path.join(dirpath, f), encoding="utf-8", errors="replace").read()
            text = re.sub(r"//[^\n]*", "", text)  # comments and doc links do not count
            for m in re.finditer(r"\bcrate::(\w+)", text):
                if m.group(1) != mod:
                    edges[mod].add(m.group(1))
            for m in re.finditer(r"use crate::\{([^}]*)\}", text):
                for name in re.findall(r"(?:^|,)\s*(\w+)", m.group(1)):
                    if name != mod:
                        edges[mod].add(name)
    # Tarjan's SCC
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: sccs.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    for comp in sccs:
        found += 1
        print(f"{crate}: {', '.join(comp)}")
sys.exit(1 if found else 0)
