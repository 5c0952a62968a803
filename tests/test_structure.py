"""The package's structure: imports point one way (docs/architecture.md), with no circles."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("energynet_tf", "trainers", "tools", "benchmarks")


def _modules():
    """`{dotted name: path}` of every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, name), REPO)[:-3].replace(os.sep, ".")
                    out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, name)
    return out


def import_graph():
    """`{module: set(modules it imports)}` among the project's modules, function-level imports included."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                for alias in node.names:
                    # `from package import module` imports the module; `from module import name`, the module.
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                targets.add(node.args[0].value)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph):
    """Every elementary circle found by a depth-first walk, as lists of modules (empty: none)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_the_project():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_model_and_convert_depend_one_way_and_the_presets_have_one_owner():
    graph = import_graph()
    assert "energynet_tf.model" in graph["energynet_tf.convert"]
    assert "energynet_tf.convert" not in graph["energynet_tf.model"]
    # The preset table lives in tools.presets; the static front and the search import it, not tools.reproduce.
    for tool in ("tools.static_front", "tools.search_alpha"):
        assert "tools.presets" in graph[tool] and "tools.reproduce" not in graph[tool], tool
    assert "tools.reproduce" not in graph["tools.static_front"]
