"""The repository's shape: a README for readers whose reading guide points at code and tests that exist, core
modules of a page or a few, imports that flow one way, and experiments the core never imports."""
import ast
import importlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = sorted(name[:-3] for name in os.listdir(ROOT) if name.endswith(".py"))


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_the_readme_opens_with_the_two_commands_and_stays_short():
    lines = readme().splitlines()
    assert len(lines) <= 300
    assert "python train.py --scenario 3m --quality poor --lam 0.1" in lines[2] and "pip install" in lines[2]
    assert lines[3].strip() == "python -m pytest -q"


def test_every_function_and_test_the_reading_guide_names_exists():
    guide = readme().split("## Reading the code beside the paper")[1].split("\n## ")[0]
    rows = [line for line in guide.splitlines() if line.startswith("| ") and ".py:" in line]
    assert len(rows) >= 15
    for row in rows:
        _, code, tests = [cell.strip() for cell in row.strip("|").split(" | ")]
        module = None
        for ref in re.findall(r"`([^`]+)`", code):             # `file.py:name`, then `Name` or `Class.method`
            if ".py:" in ref:
                module, ref = ref.split(".py:")
            target = importlib.import_module(module)
            for part in ref.split("."):
                target = getattr(target, part)
        test_file = None
        for ref in re.findall(r"`([^`]+)`", tests):            # `test_x.py::test_y`, then `::test_z`
            if "::" in ref and ".py" in ref:
                test_file, ref = ref.split("::")
            with open(os.path.join(ROOT, "tests", test_file)) as f:
                assert f"def {ref.lstrip(':')}(" in f.read(), (test_file, ref)


def imports_of(path):
    """The top-level module names a file imports, at any depth of its code (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_are_pages_and_import_one_way_never_from_experiments():
    graph = {name: imports_of(os.path.join(ROOT, f"{name}.py")) & set(CORE) - {name} for name in CORE}
    for name in CORE:
        assert "experiments" not in imports_of(os.path.join(ROOT, f"{name}.py")), name
        with open(os.path.join(ROOT, f"{name}.py")) as f:
            assert len(f.read().splitlines()) <= 450, name
    seen, order = set(), []

    def visit(name, path):                                      # depth-first: a name met on its own path is a cycle
        assert name not in path, " -> ".join(path + [name])
        if name not in seen:
            for dependency in sorted(graph[name]):
                visit(dependency, path + [name])
            seen.add(name)
            order.append(name)
    for name in CORE:
        visit(name, [])
    assert order.index("data") < order.index("eaq") < order.index("train") < order.index("evaluate")


def slug(heading):
    """The anchor a Markdown heading gets (GitHub's rule: lower case, punctuation dropped, spaces as dashes)."""
    return re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower()).replace(" ", "-")


def test_every_link_of_the_readme_and_docs_reaches_a_file_and_heading():
    pages = ["README.md"] + [os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
                             if name.endswith(".md")]
    headings = {}
    for page in pages:
        with open(os.path.join(ROOT, page)) as f:
            headings[os.path.normpath(page)] = {slug(line) for line in f.read().splitlines() if line.startswith("#")}
    for page in pages:
        with open(os.path.join(ROOT, page)) as f:
            links = re.findall(r"\]\(([^)\s]+)\)", f.read())
        for link in (link for link in links if not link.startswith("http")):
            path, _, anchor = link.partition("#")
            target = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else os.path.normpath(page)
            assert os.path.exists(os.path.join(ROOT, target)), (page, link)
            assert not anchor or not target.endswith(".md") or anchor in headings[target], (page, link)
