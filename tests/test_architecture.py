"""The house rules of the package layout, read from the source with ast (every import, those inside functions too):
the floors of pipeline.FLOORS, each module importing only from its own floor or lower ones; no import cycle between
modules; thin stages that import no other stage, no library module importing a stage, no module importing another
module's _private name; every registry named for its file; docs/architecture.md naming every module and README's
stage table the stages folder."""
import ast
import re

import pytest

from pipeline import FLOORS
from pipeline.stages import STAGES

from conftest import ROOT

PIPELINE = ROOT / "pipeline"
TOP = ("cli", "__main__")  # the command line stands above every floor
MAX_STAGE_LINES = 80


def _module_name(path, root):
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, root):
    """(imported module, imported name or None, line) of every import of the package in a file, relative imports
    resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            for a in node.names:
                yield module, a.name, node.lineno


def _floor(module, floors):
    """The floor index of a module name: -1 for the package's own __init__, len(floors) for the command line."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    if parts[1] in TOP:
        return len(floors)
    return floors.index(parts[1]) if parts[1] in floors else None


def import_graph(root):
    """{module: {imported module: first line}} of the package under `root`; an imported name that is a module
    counts as that module."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for own, path in modules.items():
        edges = graph.setdefault(own, {})
        for module, name, line in _imports(path, root):
            target = f"{module}.{name}" if name and f"{module}.{name}" in modules else module
            if target.split(".")[0] == root.name and target != own:
                edges.setdefault(target, line)
    return modules, graph


def cycles(graph):
    """The import cycles: each strongly connected set of two or more modules (Tarjan), sorted."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def violations(root, floors=FLOORS):
    """The broken rules under a package folder `root`: a module on no floor, an import from a higher floor, an
    import cycle, a library module importing a stage, a stage importing another stage, or any module importing
    another module's _private name."""
    pkg = root.name
    modules, graph = import_graph(root)
    found = []
    for own, path in sorted(modules.items()):
        rel = path.relative_to(root).as_posix()
        mine = _floor(own, floors)
        if mine is None:
            found.append(f"{rel}: on no floor ({', '.join(floors)})")
            continue
        for target, line in graph[own].items():
            theirs = _floor(target, floors)
            if theirs is not None and theirs > mine:
                found.append(f"{rel}:{line}: floor {floors[mine] if mine >= 0 else pkg} imports {target} from the "
                             f"higher floor {floors[theirs] if theirs < len(floors) else 'cli'}")
            if own.startswith(f"{pkg}.stages.") and target.startswith(f"{pkg}.stages."):
                found.append(f"{rel}:{line}: stage imports the stage {target}")
        for module, name, line in _imports(path, root):
            if not module.startswith(pkg):
                continue
            target = f"{module}.{name}" if name else module
            leaf = (name or module.rsplit(".", 1)[-1])
            if leaf.startswith("_") and not leaf.startswith("__") and module != own:
                found.append(f"{rel}:{line}: imports the private name {target}")
    found += [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    return found


def test_every_import_points_down_a_floor_without_cycles_or_private_names():
    assert violations(PIPELINE) == []


def _tree(tmp_path, files):
    root = tmp_path / "pipeline"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for folder in {p.parent for p in root.rglob("*.py")}:
        (folder / "__init__.py").touch()
    return root


def test_the_checker_catches_a_bad_tree(tmp_path):
    root = _tree(tmp_path, {
        "core/io.py": "def _plan():\n    pass\n",
        "retrieval/rank.py": "from pipeline.retrieval.knn import nearest\n",
        "retrieval/knn.py": "def f():\n    from pipeline.retrieval import rank\n",  # inside a function: still seen
        "retrieval/predict.py": "from pipeline.stages.embed import run\nfrom ..core.io import _plan\n"
                                "from pipeline.inference import tricks\n",
        "inference/tricks.py": "import pipeline.core.io\n",
        "stages/embed.py": "from pipeline.stages import ensemble\nfrom pipeline.retrieval.rank import rank\n",
        "stages/ensemble.py": "",
        "attic/old.py": "",
    })
    floors = ("core", "retrieval", "inference", "stages")
    assert violations(root, floors) == [
        "attic/__init__.py: on no floor (core, retrieval, inference, stages)",
        "attic/old.py: on no floor (core, retrieval, inference, stages)",
        "retrieval/predict.py:1: floor retrieval imports pipeline.stages.embed from the higher floor stages",
        "retrieval/predict.py:3: floor retrieval imports pipeline.inference.tricks from the higher floor inference",
        "retrieval/predict.py:2: imports the private name pipeline.core.io._plan",
        "stages/embed.py:1: stage imports the stage pipeline.stages.ensemble",
        "import cycle: pipeline.retrieval.knn <-> pipeline.retrieval.rank",
    ]


def test_floors_are_the_package_folders():
    folders = {p.name for p in PIPELINE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(FLOORS) - {"config"}
    assert (PIPELINE / "config.py").is_file() and (PIPELINE / "configs" / "default.yaml").is_file()
    assert {p.stem for p in PIPELINE.glob("*.py")} == {"__init__", "__main__", "cli", "config"}


def test_every_stage_has_its_module_and_is_short():
    files = {p.stem for p in (PIPELINE / "stages").glob("*.py") if p.name != "__init__.py"}
    assert {m.rsplit(".", 1)[-1] for m in STAGES.values()} == files
    assert all(m.startswith("pipeline.stages.") for m in STAGES.values())
    for name in files:
        lines = len((PIPELINE / "stages" / f"{name}.py").read_text().splitlines())
        assert lines <= MAX_STAGE_LINES, f"stages/{name}.py has {lines} lines: a stage parses and calls the library"


# upper-case tables of the same shape that are not a pluggable kind
NOT_REGISTRIES = {"RANGES"}  # config.py: default.yaml's schema (each numeric key's range), one entry per key


def registries(root):
    """{(module path, name)} of the registries: public upper-case module-level dicts from a name to a class,
    function or entry (a Name, Lambda or Call per value), and the stage table; NOT_REGISTRIES aside."""
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and node.value.values):
                continue
            for target in node.targets:
                name = getattr(target, "id", "")
                callables = all(isinstance(v, (ast.Name, ast.Lambda, ast.Call)) for v in node.value.values)
                if name.isupper() and not name.startswith("_") and (callables or name == "STAGES") \
                        and name not in NOT_REGISTRIES:
                    found.add((path.relative_to(root).as_posix(), name))
    return found


def test_every_registry_is_a_plain_dict_named_for_its_file():
    found = registries(PIPELINE)
    assert {name for _, name in found} >= {"HEADS", "NECKS", "SAMPLERS", "LAYOUTS", "CAPTION_LAYOUTS", "OPTIMIZERS",
                                           "SCHEDULERS", "TRICKS", "STAGES"}
    for path, name in sorted(found):
        stem = path.removesuffix("/__init__.py").removesuffix(".py").rsplit("/", 1)[-1]
        assert stem == name.lower(), f"{path}: the registry {name} belongs in a module named {name.lower()}.py"


def _section(path, title):
    text = path.read_text()
    m = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"{path.relative_to(ROOT)} has no '## {title}' section"
    return m.group(1)


def _tree_modules(section):
    """The modules a folder map names, as paths relative to pipeline/: a line indented by two spaces opens a
    folder ('data/') or names top-level modules; deeper-indented lines continue the folder."""
    block = section.split("```")[1]
    named, folder = set(), None
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        words = line.split()
        if not words:
            continue
        if indent == 0:
            folder = None  # the repository root: run.sh, pipeline/, tests/ ...
            continue
        if indent == 2:
            folder = words[0].rstrip("/") if words[0].endswith("/") else ""
        if folder is None:
            continue
        for name in re.findall(r"\b([a-z_]+\.py)\b", line):
            named.add(f"{folder}/{name}" if folder else name)
    return named


def test_architecture_page_names_every_module_and_only_those():
    named = _tree_modules(_section(ROOT / "docs" / "architecture.md", "Floors"))
    modules = {p.relative_to(PIPELINE).as_posix() for p in PIPELINE.rglob("*.py")
               if p.name != "__init__.py" and p.parent.name != "stages"} | {"__init__.py"}
    assert sorted(named - modules) == [], "docs/architecture.md names modules that do not exist"
    assert sorted(modules - named) == [], "docs/architecture.md does not name these modules"


def test_readme_stage_table_is_the_stages_folder():
    table = _section(ROOT / "README.md", "Stages")
    listed = re.findall(r"^\| `([a-z-]+)` \|", table, re.M)
    assert listed == list(STAGES)


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_every_docs_page_is_linked_from_the_readme(page):
    assert f"docs/{page}" in (ROOT / "README.md").read_text()
