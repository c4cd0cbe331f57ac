"""The house rules of the package layout, read from the source with ast: thin stages over a library grouped by
concept, no library module importing a stage, no module importing another module's _private name, small modules
and folders, and a README whose Architecture section and stage table match the tree."""
import ast
import re

import pytest

from pipeline.cli import STAGES

from conftest import ROOT

PIPELINE = ROOT / "pipeline"
LIBRARY_FOLDERS = ("data", "model", "training", "retrieval", "experiments", "inference", "text", "reports", "kernel",
                   "kaggle")
MAX_MODULES = 8
MAX_LINES = 300
LONG_ALLOWED = {"data/synth.py": "the procedural dataset generator: one drawing routine per part of a room"}
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


def violations(root):
    """The broken rules under a package folder `root`: a library module importing a stage, or any module importing
    another module's _private name."""
    pkg = root.name
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        is_stage_or_cli = rel.startswith("stages/") or rel == "cli.py"
        own = _module_name(path, root)
        for module, name, line in _imports(path, root):
            if not module.startswith(pkg):
                continue
            target = f"{module}.{name}" if name else module
            if not is_stage_or_cli and (target.startswith(f"{pkg}.stages.") or target == f"{pkg}.stages"):
                found.append(f"{rel}:{line}: library module imports the stage {target}")
            leaf = (name or module.rsplit(".", 1)[-1])
            if leaf.startswith("_") and not leaf.startswith("__") and module != own:
                found.append(f"{rel}:{line}: imports the private name {target}")
    return found


def test_no_library_module_imports_a_stage_and_no_private_imports():
    assert violations(PIPELINE) == []


def test_the_import_rules_catch_a_bad_import(tmp_path):
    root = tmp_path / "pipeline"
    (root / "stages").mkdir(parents=True)
    (root / "retrieval").mkdir()
    (root / "stages" / "embed.py").write_text("from pipeline.retrieval.rank import rank\n")
    (root / "retrieval" / "rank.py").write_text("def _plan():\n    pass\n")
    (root / "retrieval" / "predict.py").write_text(
        "from pipeline.stages.embed import run\nfrom .rank import _plan\nimport pipeline.stages\n")
    assert violations(root) == [
        "retrieval/predict.py:1: library module imports the stage pipeline.stages.embed.run",
        "retrieval/predict.py:2: imports the private name pipeline.retrieval.rank._plan",
        "retrieval/predict.py:3: library module imports the stage pipeline.stages",
    ]


def test_every_stage_has_its_module_and_is_short():
    files = {p.stem for p in (PIPELINE / "stages").glob("*.py") if p.name != "__init__.py"}
    assert {m.rsplit(".", 1)[-1] for m in STAGES.values()} == files
    assert all(m.startswith("pipeline.stages.") for m in STAGES.values())
    for name in files:
        lines = len((PIPELINE / "stages" / f"{name}.py").read_text().splitlines())
        assert lines <= MAX_STAGE_LINES, f"stages/{name}.py has {lines} lines: a stage parses and calls the library"


@pytest.mark.parametrize("folder", LIBRARY_FOLDERS)
def test_library_folders_hold_at_most_eight_modules(folder):
    modules = [p for p in (PIPELINE / folder).glob("*.py") if p.name != "__init__.py"]
    assert 1 <= len(modules) <= MAX_MODULES, sorted(p.name for p in modules)
    assert (PIPELINE / folder / "__init__.py").is_file()


def test_no_module_over_300_lines_but_the_named_ones():
    for path in PIPELINE.rglob("*.py"):
        rel = path.relative_to(PIPELINE).as_posix()
        lines = len(path.read_text().splitlines())
        if rel not in LONG_ALLOWED:
            assert lines <= MAX_LINES, f"{rel}: {lines} lines"


def _section(title):
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def _tree_modules(section):
    """The modules the Architecture section's folder map names, as paths relative to pipeline/: a line indented by
    two spaces opens a folder ('data/') or names top-level modules; deeper-indented lines continue the folder."""
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


def test_readme_architecture_names_only_modules_that_exist_and_every_folder():
    named = _tree_modules(_section("Architecture"))
    assert len(named) >= 30, named
    assert [m for m in sorted(named) if not (PIPELINE / m).is_file()] == []
    for folder in LIBRARY_FOLDERS:
        modules = {f"{folder}/{p.name}" for p in (PIPELINE / folder).glob("*.py") if p.name != "__init__.py"}
        assert modules <= named, f"the README's Architecture section does not name {sorted(modules - named)}"
    top = {p.name for p in PIPELINE.glob("*.py") if p.name != "__init__.py"}
    assert top <= named, sorted(top - named)


def test_readme_stage_table_is_the_stages_folder():
    table = _section("Stages")
    listed = re.findall(r"^\| `([a-z-]+)` \|", table, re.M)
    assert listed == list(STAGES)
