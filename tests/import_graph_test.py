"""Dependencies inside prompt_jax/ point one way, and never into tasks/.

The module graph is read with `ast` from every .py file under prompt_jax/
(nothing is imported). Imports inside functions count: a lazy import is
still a dependency.
"""

import ast
import dataclasses
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "prompt_jax"
FORBIDDEN = "tasks"


@dataclasses.dataclass(frozen=True)
class Edge:
  """One import of module `target` at `path`:`line`."""
  target: str
  path: str
  line: int


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
  """`prompt_jax/a/b.py` -> `prompt_jax.a.b`; `a/__init__.py` -> `a`."""
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def absolute_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
  """The absolute module a `from X import ...` statement names."""
  if not node.level:
    return node.module or ""
  package = module.split(".")
  if not is_package:
    package = package[:-1]
  package = package[:len(package) - (node.level - 1)]
  return ".".join(package + ([node.module] if node.module else []))


def statements(path: pathlib.Path) -> list[ast.Import | ast.ImportFrom]:
  """Every import statement in `path`, at any depth (functions included)."""
  tree = ast.parse(path.read_text(), filename=str(path))
  return [node for node in ast.walk(tree)
          if isinstance(node, (ast.Import, ast.ImportFrom))]


def resolve(name: str, modules: set[str]) -> str | None:
  """The longest prefix of dotted `name` that is a known module, else None."""
  parts = name.split(".")
  for end in range(len(parts), 0, -1):
    prefix = ".".join(parts[:end])
    if prefix in modules:
      return prefix
  return None


def targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
            modules: set[str]) -> list[str]:
  """The known modules one import statement depends on.

  `from prompt_jax.pkg import mod` resolves to `prompt_jax.pkg.mod` when that
  is a module, else to `prompt_jax.pkg` (the name is an attribute).
  """
  if isinstance(node, ast.Import):
    names = [alias.name for alias in node.names]
  else:
    base = absolute_base(node, module, is_package)
    names = [f"{base}.{alias.name}" for alias in node.names]
  return [t for t in (resolve(n, modules) for n in names) if t is not None]


def package_files(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
  """Module name -> file for every .py file under `root`/prompt_jax."""
  return {module_name(p, root): p
          for p in sorted((root / PACKAGE).rglob("*.py"))}


def build_graph(root: pathlib.Path = ROOT) -> dict[str, list[Edge]]:
  """Module -> its edges to other prompt_jax modules (first one per target)."""
  files = package_files(root)
  modules = set(files)
  graph = {}
  for module, path in files.items():
    edges = {}
    for node in statements(path):
      for target in targets(node, module, path.name == "__init__.py", modules):
        if target != module and target not in edges:
          edges[target] = Edge(target, str(path.relative_to(root)), node.lineno)
    graph[module] = list(edges.values())
  return graph


def find_cycles(graph: dict[str, list[Edge]]) -> list[list[str]]:
  """Cycles met in a depth-first walk, each as `[a, b, ..., a]`.

  A cycle whose modules all lie on an already reported one is left out, so a
  knot of modules is reported once.
  """
  cycles, on_path, done = [], [], set()

  def visit(module: str) -> None:
    if module in on_path:
      start = on_path.index(module)
      cycle = on_path[start:] + [module]
      if not any(set(cycle) <= set(c) for c in cycles):
        cycles.append(cycle)
      return
    if module in done:
      return
    on_path.append(module)
    for edge in graph.get(module, []):
      visit(edge.target)
    on_path.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)
  return cycles


def top_level_names(node: ast.Import | ast.ImportFrom) -> list[str]:
  """Absolute module names a statement imports (relative imports: none)."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  return [node.module] if not node.level and node.module else []


def is_forbidden(name: str) -> bool:
  return name == FORBIDDEN or name.startswith(FORBIDDEN + ".")


def forbidden_imports(root: pathlib.Path = ROOT) -> list[str]:
  """`path:line: statement` for every import of tasks/ from prompt_jax/."""
  found = []
  for path in package_files(root).values():
    for node in statements(path):
      if any(is_forbidden(n) for n in top_level_names(node)):
        found.append(
            f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
  return sorted(found)


def describe(cycle: list[str], graph: dict[str, list[Edge]]) -> str:
  """`a -> b -> a  (a.py:3, b.py:7)`: the cycle and where each edge is."""
  where = [next(e for e in graph[a] if e.target == b)
           for a, b in zip(cycle, cycle[1:])]
  places = ", ".join(f"{e.path}:{e.line}" for e in where)
  return f"{' -> '.join(cycle)}  ({places})"


def test_no_import_cycles():
  graph = build_graph()
  cycles = [describe(c, graph) for c in find_cycles(graph)]
  assert not cycles, "import cycles in prompt_jax:\n" + "\n".join(cycles)


def test_library_does_not_import_tasks():
  found = forbidden_imports()
  assert not found, "prompt_jax imports tasks:\n" + "\n".join(found)


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
  for name, text in files.items():
    path = root / PACKAGE / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_checker_finds_lazy_and_relative_cycles(tmp_path):
  _write(tmp_path, {
      "__init__.py": "",
      "pkg/__init__.py": "",
      "pkg/a.py": "from prompt_jax.pkg import b\n",
      "pkg/b.py": "def f():\n  from . import c\n",
      "pkg/c.py": "import prompt_jax.pkg.a\n",
      "d.py": "from prompt_jax.pkg import a\n",
  })
  graph = build_graph(tmp_path)
  assert [describe(c, graph) for c in find_cycles(graph)] == [
      "prompt_jax.pkg.a -> prompt_jax.pkg.b -> prompt_jax.pkg.c"
      " -> prompt_jax.pkg.a  (prompt_jax/pkg/a.py:1, prompt_jax/pkg/b.py:2,"
      " prompt_jax/pkg/c.py:1)"]


def test_checker_resolves_attributes_to_their_module(tmp_path):
  _write(tmp_path, {
      "__init__.py": "",
      "a.py": "from prompt_jax.b import some_function\n",
      "b.py": "X = 1\n",
  })
  graph = build_graph(tmp_path)
  assert [e.target for e in graph["prompt_jax.a"]] == ["prompt_jax.b"]
  assert find_cycles(graph) == []


def test_checker_reports_tasks_imports_with_line(tmp_path):
  _write(tmp_path, {
      "__init__.py": "",
      "a.py": "import os\n\ndef f():\n  from tasks import squad\n",
      "b.py": "import tasks_extra\nimport tasks\n",
  })
  assert forbidden_imports(tmp_path) == [
      "prompt_jax/a.py:4: from tasks import squad",
      "prompt_jax/b.py:2: import tasks",
  ]
