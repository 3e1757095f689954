"""The shape of the package: small modules, no import cycles, no reaching into another module's privates."""

import ast
from pathlib import Path

import grimp
import pytest

from fedlab.core.choices import CLIENT_ACCOUNTANTS, DP_MODES, MODELS, SERVER_ACCOUNTANTS

PACKAGE = Path(__file__).resolve().parents[1] / "fedlab"
LONGEST = 500


def test_no_module_is_longer_than_500_lines():
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > LONGEST
    }
    assert not long, long


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over the module graph: the import cycles, as groups of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_the_import_graph_has_no_cycle():
    # grimp sees every import statement, including those inside functions.
    assert strongly_connected(grimp.build_graph("fedlab")) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(name)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.z", imported="a.x")
    assert strongly_connected(graph) == [["a.x", "a.y"]]


def private_imports(root: Path) -> list[str]:
    """Every ``from fedlab.m import _name``: one module using another module's private name."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedlab"):
                found += [
                    f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                ]
    return found


def test_no_module_imports_another_modules_private_names():
    assert private_imports(PACKAGE) == []


def test_the_private_import_finder_finds_one(tmp_path):
    (tmp_path / "m.py").write_text("from fedlab.training.local import _secret\n", encoding="utf-8")
    assert private_imports(tmp_path) == ["m.py: fedlab.training.local._secret"]


VOCABULARY = frozenset({*DP_MODES, *MODELS, *CLIENT_ACCOUNTANTS, *SERVER_ACCOUNTANTS}) - {"none"}
"""The config strings the config resolves (dp.mode, model.kind, dp.accountant)."""


def _literals(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def vocabulary_comparisons(root: Path) -> list[str]:
    """Every comparison with a resolved config string, or of a ``.mode`` attribute with a string."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            literals = [value for o in operands for value in _literals(o)]
            on_mode = any(isinstance(o, ast.Attribute) and o.attr == "mode" for o in operands)
            if VOCABULARY.intersection(literals) or (literals and on_mode):
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_below_the_config_nothing_compares_mode_accountant_or_model_strings():
    # The config resolves them: dp.enabled, dp.dpsgd, dp.central, dp.distributed, dp.user_level;
    # model.kind is a ModelKind; accountants are chosen by one factory.
    outside_core = [p for p in PACKAGE.iterdir() if p.is_dir() and p.name not in ("core", "__pycache__")]
    assert [hit for p in outside_core for hit in vocabulary_comparisons(p)] == []


@pytest.mark.parametrize(
    "source",
    [
        'if config.dp.mode in ("central", "distributed"):\n    pass\n',
        'if kind == "mlp":\n    pass\n',
        'if name != "pld":\n    pass\n',
    ],
)
def test_the_vocabulary_comparison_finder_finds_one(tmp_path, source):
    (tmp_path / "m.py").write_text(source, encoding="utf-8")
    assert vocabulary_comparisons(tmp_path) == ["m.py:1"]


def unmirrored_test_folders(tests: Path, package: Path) -> list[str]:
    """Test folders without a package of the same path under ``package`` (``benchmarks`` aside)."""
    folders = [p for p in tests.rglob("*") if p.is_dir() and p.name != "__pycache__"]
    return sorted(
        str(p.relative_to(tests))
        for p in folders
        if p.relative_to(tests).parts[0] != "benchmarks" and not (package / p.relative_to(tests)).is_dir()
    )


def test_tests_mirror_the_package():
    assert unmirrored_test_folders(PACKAGE.parent / "tests", PACKAGE) == []


def test_the_mirror_finder_finds_a_stray_folder(tmp_path):
    (tmp_path / "fedlab" / "privacy").mkdir(parents=True)
    (tmp_path / "tests" / "privacy").mkdir(parents=True)
    (tmp_path / "tests" / "integration").mkdir()
    assert unmirrored_test_folders(tmp_path / "tests", tmp_path / "fedlab") == ["integration"]
