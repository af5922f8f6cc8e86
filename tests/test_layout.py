"""The layout's rules, checked on the code itself: imports run one way (service → {queries, indexer} → schema;
the indexer uses only ``queries.sql`` of the read side), no module-level import cycle, and the read path never
loads the compute stack (torch, transformers, SQLAlchemy, numpy…), which is what keeps a lookup as cheap as
DuckDB. ``make lint`` runs this file too."""

import ast
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schema", "queries", "indexer", "service")
COMPUTE = ("torch", "transformers", "tokenizers", "safetensors", "sqlalchemy", "duckdb_engine", "scipy", "ray")


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for file in sorted((root / pkg).rglob("*.py")):
            parts = file.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def _imports(module: str, file: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in ``file``; ``from a import b`` names ``a.b`` when
    that is a module of ours, else ``a``."""
    tree = ast.parse(file.read_text(), str(file))
    top = {id(n) for n in tree.body} | {id(n) for s in tree.body if isinstance(s, ast.Try | ast.If) and not (
        isinstance(s, ast.If) and "TYPE_CHECKING" in ast.unparse(s.test)) for n in ast.walk(s)}
    out = []
    package = module if known.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..a import b
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in known else base, id(node) in top))
    return out


def import_problems(root: Path) -> list[str]:
    """Every breach of the layout's import rules under ``root``, one line each."""
    known = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in known}
    problems = []
    for module, file in known.items():
        room = module.split(".")[0]
        for target, at_top in _imports(module, file, known):
            head = target.split(".")[0]
            if room == "schema" and head in ("queries", "indexer", "service"):
                problems.append(f"{module} imports {target}: schema imports no other room")
            if room == "queries" and (head in ("indexer", "service") or head in COMPUTE):
                problems.append(f"{module} imports {target}: queries never imports the indexer or the compute stack")
            if room == "queries" and head in ("numpy", "pyarrow") and at_top:
                problems.append(f"{module} imports {target} at module level: the read path imports it where it "
                                "computes, inside the function")
            if room == "indexer" and (head == "service" or (head == "queries" and target != "queries.sql")):
                problems.append(f"{module} imports {target}: the indexer uses only the SQL builders of queries")
            if at_top and target in known and target != module:
                graph[module].add(target)
    problems += [f"import cycle: {' → '.join(c)}" for c in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group) + [sorted(group)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_tree_keeps_the_import_rules() -> None:
    assert import_problems(ROOT) == []


def test_the_rules_catch_a_cycle_an_eager_torch_and_queries_reaching_into_the_indexer(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    lens = tmp_path / "queries" / "lens.py"
    lens.write_text("import torch\n" + lens.read_text())
    (tmp_path / "queries" / "sql.py").write_text("from queries import lens\n" + (tmp_path / "queries" / "sql.py")
                                                 .read_text())
    catalog = tmp_path / "queries" / "catalog.py"
    catalog.write_text(catalog.read_text().replace("def catalog(", "def _x():\n    from indexer.index import run\n\n\n"
                                                                   "def catalog("))
    found = import_problems(tmp_path)
    assert "queries.lens imports torch: queries never imports the indexer or the compute stack" in found
    assert "queries.catalog imports indexer.index.run: queries never imports the indexer or the compute stack" in found
    assert any(p.startswith("import cycle:") and "queries.lens" in p and "queries.sql" in p for p in found)


# ---- what a read actually loads ----------------------------------------------------------------------------

LIGHT = (*COMPUTE, "numpy", "pyarrow", "pandas", "polars", "indexer", "fastapi", "uvicorn", "pydantic_settings")


@pytest.fixture(scope="module")
def full_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture store of the previous release (every table filled), upgraded."""
    from schema.writer import upgrade_store

    db = tmp_path_factory.mktemp("layout") / "store.duckdb"
    with gzip.open(ROOT / "tests" / "fixtures" / "store_v1.duckdb.gz") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    upgrade_store(db)
    return db


def _loaded(code: str) -> tuple[list[str], str]:
    """The top-level packages a fresh interpreter holds after running ``code``, and what it printed."""
    probe = code + "\nimport sys, json\nprint('\\nMODULES', json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    out, _, mods = done.stdout.rpartition("\nMODULES ")
    assert mods, done.stderr
    return json.loads(mods), out + done.stderr


def test_import_queries_and_a_lookup_load_neither_the_compute_stack_nor_the_indexer(full_store: Path) -> None:
    mods, out = _loaded(f"import queries\nwith queries.connect({str(full_store)!r}) as lens:\n"
                        "    print(len(lens.promoters('paris')), lens.vector('tiny', 'ff_value', 1, 7).top[0].token)")
    assert "paris" in out
    assert sorted(set(mods) & set(LIGHT)) == []


READ_COMMANDS = [
    ["models"], ["promoters", "paris"], ["suppressors", "paris", "--json"], ["vector", "tiny", "ff_value", "1", "7"],
    ["tokens", "paris"], ["sql", "SELECT count(*) FROM projections"], ["drift", "tiny", "ff_value", "1", "7"],
    ["changed", "tiny", "checkpoint-100", "checkpoint-100"], ["alignments"], ["alignments", "--id", "1"],
    ["registered"], ["check"],
]


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_read_commands_load_neither_the_compute_stack_nor_the_indexer(full_store: Path, argv: list[str]) -> None:
    mods, out = _loaded(f"from service.cli import main\nrc = main({[*argv, '--db', str(full_store)]!r})\n"
                        "print('exit', rc)")
    assert "exit 0" in out, out
    assert sorted(set(mods) & set(LIGHT)) == []


def test_head_map_loads_numpy_to_compute_and_nothing_heavier(full_store: Path) -> None:
    mods, out = _loaded(f"from service.cli import main\nprint('exit', main(['head-map', 'paris', '--db', "
                        f"{str(full_store)!r}]))")
    assert "exit 0" in out, out
    assert sorted(set(mods) & set(LIGHT)) == ["numpy"]


@pytest.mark.parametrize("argv", [["--help"], ["promoters", "--help"], ["models", "--help"]])
def test_help_loads_neither_duckdb_nor_pydantic(argv: list[str]) -> None:
    mods, out = _loaded(f"from service.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert "usage: lensdb" in out
    heavy = set(LIGHT) | ({"duckdb"} if argv == ["--help"] else set()) | ({"pydantic"} if argv == ["--help"] else set())
    assert sorted(set(mods) & heavy) == []
