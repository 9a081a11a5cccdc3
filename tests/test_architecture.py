"""The package's rooms keep their order (docs/ARCHITECTURE.md): read from the code's own
imports (lazy ones inside functions included), no module imports from a wing above its
own, the sibling wings (the model and the data; growth and interop) never import each
other, and there is no import circle."""

import ast
import collections
import os

GROWJAX = os.path.join(os.path.dirname(__file__), "..", "growjax")

# Wings from the ground up; a module may import its own wing and those below it.
LEVELS = {
    "base": 0,      # growjax, faults, console, distributed, lease, checkpoint
    "model": 1, "data": 1,
    "core": 2,      # sharding, config: the mesh rules and the run config
    "train": 3,
    "growth": 4, "interop": 4,
    "cli": 5,       # cli, commands, __main__
}
CORE = {"growjax.sharding", "growjax.config"}
CLI = {"growjax.cli", "growjax.commands", "growjax.__main__"}


def wing(module: str) -> str:
  parts = module.split(".")
  if len(parts) > 1 and parts[1] in ("model", "data", "train", "growth", "interop"):
    return parts[1]
  return "core" if module in CORE else "cli" if module in CLI else "base"


def modules() -> dict[str, str]:
  out = {}
  for root, _, files in os.walk(GROWJAX):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        rel = os.path.relpath(path, os.path.dirname(GROWJAX))[:-3]
        out[rel.replace(os.sep, ".").replace(".__init__", "")] = path
  return out


def import_graph() -> dict[str, set[str]]:
  """module -> the growjax modules it imports, anywhere in its code."""
  mods = modules()

  def resolve(name):
    while name and name not in mods:
      name = name.rpartition(".")[0]
    return name

  edges = collections.defaultdict(set)
  for module, path in mods.items():
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
      names = []
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("growjax"):
        names = [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.startswith("growjax")]
      for name in names:
        target = resolve(name)
        if target and target != module and target != "growjax":
          edges[module].add(target)
  return edges


def test_no_module_imports_from_a_wing_above_or_beside_its_own():
  bad = []
  for module, targets in import_graph().items():
    for target in targets:
      a, b = wing(module), wing(target)
      if LEVELS[b] > LEVELS[a] or (LEVELS[b] == LEVELS[a] and a != b):
        bad.append(f"{module} ({a}) -> {target} ({b})")
  assert not bad, "\n".join(sorted(bad))


def test_no_import_circle():
  edges = import_graph()
  index, low, stack, on_stack, circles = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
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
        circles.append(sorted(component))

  for v in modules():
    if v not in index:
      visit(v)
  assert not circles, circles


def test_every_module_has_a_wing_and_the_wings_exist():
  wings = {wing(m) for m in modules()}
  assert wings == set(LEVELS), wings
