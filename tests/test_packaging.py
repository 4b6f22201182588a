"""pyproject.toml is the one source of truth; environment.yml and binder/ must agree with it.

The checks are plain functions returning a list of problems, run on the real files and on
deliberately broken copies (so we know each check can fail).
"""

from __future__ import annotations

import collections
import copy
import functools
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"torchvision", "timm"}
# conda package names that provide a pip distribution under another name
CONDA_TO_PIP = {"pytorch": "torch", "pytorch-cpu": "torch", "pytorch-gpu": "torch", "python": "python"}
EXPECTED_EXTRAS = {"quant", "widgets", "serve", "ray", "course", "dev", "all"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- loading


def load_pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def load_binder() -> dict:
    """Everything binder/ installs: its environment.yml (if any), requirements.txt, postBuild."""
    binder = ROOT / "binder"
    out: dict = {"env": None, "requirements": [], "postBuild": ""}
    if (binder / "environment.yml").exists():
        out["env"] = load_yaml(binder / "environment.yml")
    if (binder / "requirements.txt").exists():
        out["requirements"] = (binder / "requirements.txt").read_text().splitlines()
    if (binder / "postBuild").exists():
        out["postBuild"] = (binder / "postBuild").read_text()
    return out


# --------------------------------------------------------------------------- parsing


def parse_pip_line(line: str) -> tuple[str, str] | None:
    """(normalized name, specifier) of a requirement line; None for options, comments, paths."""
    line = line.split(" #")[0].strip()
    if not line or line.startswith(("#", "-", ".", "/")):
        return None
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return None
    return norm(req.name), str(req.specifier)


def parse_conda_dep(dep: str) -> tuple[str, str] | None:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", dep)
    if not m:
        return None
    name = norm(m.group(1))
    return CONDA_TO_PIP.get(name, name), m.group(2).strip()


def env_entries(env: dict | None) -> dict:
    """{"conda": [(name, spec)], "pip": [(name, spec)], "pip_raw": [lines]} of a conda env file."""
    out: dict = {"conda": [], "pip": [], "pip_raw": []}
    for dep in (env or {}).get("dependencies", []) or []:
        if isinstance(dep, dict):
            for line in dep.get("pip", []) or []:
                out["pip_raw"].append(str(line))
                parsed = parse_pip_line(str(line))
                if parsed:
                    out["pip"].append(parsed)
        else:
            parsed = parse_conda_dep(str(dep))
            if parsed:
                out["conda"].append(parsed)
    return out


def pyproject_requirements(pp: dict) -> dict[str, list[Requirement]]:
    """{"core": [...], extra: [...]} with self-references (vlm-course[...]) kept as they are."""
    project = pp["project"]
    groups = {"core": [Requirement(r) for r in project.get("dependencies", [])]}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        groups[extra] = [Requirement(r) for r in reqs]
    return groups


def install_lines(text: str) -> list[str]:
    """`pip install` commands of a shell script, comments dropped."""
    lines = [ln.split("#")[0] for ln in text.splitlines()]
    return [ln for ln in lines if re.search(r"\bpip\b.*\binstall\b", ln)]


# --------------------------------------------------------------------------- checks


def check_pyproject(pp: dict) -> list[str]:
    problems = []
    project = pp.get("project", {})
    if project.get("name") != "vlm-course":
        problems.append(f"distribution name is {project.get('name')!r}, expected 'vlm-course'")
    if SpecifierSet(project.get("requires-python", "")) != SpecifierSet(">=3.10"):
        problems.append(f"requires-python is {project.get('requires-python')!r}, expected '>=3.10'")
    if project.get("scripts", {}).get("vlm-course") != "vlm_course.cli:main":
        problems.append("console script vlm-course = vlm_course.cli:main is missing")
    groups = pyproject_requirements(pp)
    extras = set(groups) - {"core"}
    if extras != EXPECTED_EXTRAS:
        problems.append(f"extras are {sorted(extras)}, expected {sorted(EXPECTED_EXTRAS)}")
    for group, reqs in groups.items():
        for req in reqs:
            if norm(req.name) in FORBIDDEN:
                problems.append(f"{group} depends on {req.name}, which must never be a dependency")
    torch = [r for r in groups.get("core", []) if norm(r.name) == "torch"]
    if not torch:
        problems.append("torch is not a core dependency")
    elif any(s.operator in ("<", "<=", "==", "===", "~=") for s in torch[0].specifier):
        problems.append(f"torch must have no upper pin (got {torch[0].specifier}): users bring their own build")
    names = {g: {norm(r.name) for r in reqs} for g, reqs in groups.items()}
    if "serve" in names and "ray" in names and not names["serve"] <= names["ray"]:
        problems.append(f"the ray extra lacks serve packages: {sorted(names['serve'] - names['ray'])}")
    if "all" in groups:
        covered = set(names["all"])
        for req in groups["all"]:
            if norm(req.name) == "vlm-course":
                for extra in req.extras:
                    covered |= names.get(extra, set())
        for extra in extras - {"all"}:
            missing = names[extra] - covered
            if missing:
                problems.append(f"extra 'all' lacks {sorted(missing)} from '{extra}'")
    data = pp.get("tool", {}).get("setuptools", {}).get("package-data", {}).get("vlm_course", [])
    for pattern in ("tiny/model/*.safetensors", "tiny/model/*.json", "tiny/model/*.jinja", "data/*"):
        if pattern not in data:
            problems.append(f"package data lacks {pattern!r}")
    return problems


def check_mirror(pp: dict, entries: list[tuple[str, str]], where: str) -> list[str]:
    """Every core and course dependency appears in `entries`; nothing there is foreign or forbidden."""
    problems = []
    groups = pyproject_requirements(pp)
    wanted = {norm(r.name): r for g in ("core", "course") for r in groups.get(g, [])}
    known = {norm(r.name): r for reqs in groups.values() for r in reqs}
    have = {}
    for name, spec in entries:
        if name in ("python", "pip"):  # the conda environment's own tools
            continue
        have[name] = spec
        if name in FORBIDDEN:
            problems.append(f"{where} installs {name}, which must never be installed")
        elif name not in known:
            problems.append(f"{where} installs {name}, which pyproject.toml does not declare")
        elif spec:
            declared = known[name].specifier
            try:
                given = SpecifierSet(spec)
            except Exception:  # conda-only syntax such as "=2.4"
                continue
            pins = [s.version for s in given if s.operator == "=="]
            if pins:
                if not all(declared.contains(v) for v in pins):
                    problems.append(f"{where} pins {name}{spec}, outside pyproject's {name}{declared}")
            elif given != declared:
                problems.append(f"{where} has {name}{spec} but pyproject.toml has {name}{declared}")
    for name in sorted(set(wanted) - set(have)):
        problems.append(f"{where} lacks {name} (a core or course dependency in pyproject.toml)")
    return problems


def check_environment(pp: dict, env: dict) -> list[str]:
    problems = []
    if env.get("name") != "vlm-course":
        problems.append(f"environment.yml name is {env.get('name')!r}, expected 'vlm-course'")
    deps = [str(d) for d in env.get("dependencies", []) if not isinstance(d, dict)]
    if "python=3.11" not in [d.replace(" ", "") for d in deps]:
        problems.append("environment.yml does not ask for python=3.11")
    if "pip" not in deps:
        problems.append("environment.yml does not install pip")
    entries = env_entries(env)
    if not entries["pip"] or entries["pip"][0] != ("torch", "==2.13.0"):
        problems.append("environment.yml's pip section must start with torch==2.13.0")
    editable = [ln for ln in entries["pip_raw"] if re.match(r"^-e\s+\.(\[|$)", ln.strip())]
    if not editable:
        problems.append("environment.yml does not install the package itself (-e .[...])")
    elif "course" not in set(re.findall(r"[\w-]+", editable[0].split("[", 1)[-1])):
        problems.append("environment.yml installs the package without the course extra")
    problems += check_mirror(pp, entries["conda"] + entries["pip"], "environment.yml")
    return problems


def check_binder(pp: dict, binder: dict) -> list[str]:
    problems = []
    entries = env_entries(binder["env"])
    reqs = [p for p in (parse_pip_line(ln) for ln in binder["requirements"]) if p]
    post = install_lines(binder["postBuild"])
    post_reqs = []
    for line in post:
        for token in line.split("install", 1)[1].split():
            token = token.strip("'\"")
            parsed = parse_pip_line(token) if not token.startswith(("-", ".")) else None
            if parsed:
                post_reqs.append(parsed)
    all_entries = entries["conda"] + entries["pip"] + reqs + post_reqs
    problems += check_mirror(pp, all_entries, "binder/")
    if not any(re.search(r"""(\s|['"])\.(\[[^\]]*course[^\]]*\])?(['"]|\s|$)""", ln) for ln in post):
        problems.append("binder/postBuild does not pip install the package (.[course,...])")
    torch_sources = [n for n, _ in entries["conda"] if n == "torch"]
    conda_names = [str(d) for d in (binder["env"] or {}).get("dependencies", []) if not isinstance(d, dict)]
    if not any(d.strip().startswith("pytorch-cpu") for d in conda_names) or not torch_sources:
        problems.append("binder/ must install a CPU-only torch (conda-forge pytorch-cpu)")
    if any(n == "torch" for n, _ in entries["pip"] + reqs + post_reqs):
        problems.append("binder/ installs torch from pip too; the default Linux wheel carries CUDA")
    return problems


# --------------------------------------------------------------------------- tests on the real files


def test_pyproject_is_consistent():
    assert check_pyproject(load_pyproject()) == []


def test_environment_yml_mirrors_pyproject():
    assert check_environment(load_pyproject(), load_yaml(ROOT / "environment.yml")) == []


def test_binder_mirrors_pyproject():
    binder = load_binder()
    assert binder["env"] is not None or binder["requirements"], "binder/ has no environment.yml or requirements.txt"
    assert check_binder(load_pyproject(), binder) == []


def test_binder_postbuild_is_executable():
    post = ROOT / "binder" / "postBuild"
    assert post.exists() and post.stat().st_mode & 0o111, "binder/postBuild must exist and be executable"


def test_no_file_mentions_torchvision_outside_comments():
    for rel in ("pyproject.toml", "environment.yml", "binder/environment.yml", "binder/postBuild", "Makefile"):
        path = ROOT / rel
        assert path.is_file(), f"{rel} is missing: this check must read every file it names"
        for line in path.read_text().splitlines():
            code = line.split("#")[0]
            assert "torchvision" not in code.lower() and "timm" not in re.findall(r"[\w-]+", code.lower()), (
                f"{rel}: {line.strip()}"
            )


def test_readme_quickstart_matches_makefile():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
    for target in ("lab", "test", "course", "bench", "venv"):
        assert target in targets, f"Makefile lacks the {target} target"
    assert "make lab" in readme and "make test" in readme
    # The README's "without make" line installs the same extra as make lab, binder/ and environment.yml.
    pip_lines = [ln for ln in readme.splitlines() if re.search(r"pip install -e '?\.\[", ln)]
    assert pip_lines and all(re.search(r"\.\[[^\]]*\bcourse\b", ln) for ln in pip_lines), pip_lines
    extras = re.search(r"^EXTRAS\s*\?=\s*(\S+)", makefile, flags=re.M)
    assert extras and "course" in extras.group(1).split(","), "make lab must install the course extra"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^\s*make test\b", ci, flags=re.M), ".ci/run must run the README's test command"


# --------------------------------------------------------------------------- the checks can fail


def test_checks_catch_a_broken_pyproject():
    pp = copy.deepcopy(load_pyproject())
    pp["project"]["dependencies"] = [d for d in pp["project"]["dependencies"] if not d.startswith("torch")]
    pp["project"]["dependencies"].append("torchvision")
    pp["project"]["optional-dependencies"]["ray"] = ["ray[serve]"]
    pp["project"]["optional-dependencies"].pop("dev")
    found = "\n".join(check_pyproject(pp))
    assert "torchvision" in found and "torch is not a core dependency" in found
    assert "ray extra lacks" in found and "extras are" in found


def test_checks_catch_a_drifted_environment():
    pp = load_pyproject()
    env = copy.deepcopy(load_yaml(ROOT / "environment.yml"))
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    pip.remove(next(ln for ln in pip if ln.startswith("tqdm")))
    pip.append("torchvision==0.28.0")
    pip.append("requests")
    pip[pip.index(next(ln for ln in pip if ln.startswith("transformers")))] = "transformers>=4.40"
    found = "\n".join(check_environment(pp, env))
    assert "lacks tqdm" in found
    assert "installs torchvision" in found
    assert "installs requests" in found
    assert "transformers>=4.40" in found


def test_checks_catch_a_drifted_binder():
    pp = load_pyproject()
    binder = copy.deepcopy(load_binder())
    if binder["env"] is not None:
        binder["env"]["dependencies"] = [
            d for d in binder["env"]["dependencies"] if isinstance(d, dict) or not str(d).startswith("pytorch")
        ]
        pip = next(d for d in binder["env"]["dependencies"] if isinstance(d, dict))["pip"]
        pip[:] = [ln for ln in pip if not ln.startswith("pillow")] + ["torchvision"]
    binder["requirements"] = [ln for ln in binder["requirements"] if not ln.startswith("pillow")]
    binder["postBuild"] = "#!/bin/bash\necho nothing installed\n"
    found = "\n".join(check_binder(pp, binder))
    assert "lacks pillow" in found
    assert "torchvision" in found
    assert "does not pip install the package" in found
    assert "CPU-only torch" in found


@pytest.mark.parametrize(
    "line,expected",
    [
        ("torch==2.13.0", ("torch", "==2.13.0")),
        ("Pillow>=10.0", ("pillow", ">=10.0")),
        ("ray[serve]>=2.40", ("ray", ">=2.40")),
        ("optimum_quanto", ("optimum-quanto", "")),
        ("-e .[course]", None),
        ("# comment", None),
    ],
)
def test_parse_pip_line(line, expected):
    assert parse_pip_line(line) == expected


# --------------------------------------------------------------------------- the course extra covers the notebooks
# A learner installs `vlm-course[course]` (make lab, the README's pip line, binder/, environment.yml) and runs
# any notebook. So every module a notebook imports, and every module the package imports for it (at the top of
# a module or lazily inside a function, and the optional backends it looks up with find_spec), must come from
# the core dependencies or the course extra, directly or through their own dependencies.

NOTEBOOKS = ROOT / "notebooks"
PACKAGE = ROOT / "vlm_course"
# Optional on purpose: imported only where it exists, never needed on the course's CPU path.
NOT_FOR_THE_COURSE = {
    "flash_attn",  # flash_attention_2 on a CUDA GPU (vlm_course.fit checks for it)
    "tomli",  # Python 3.10's tomllib
    "readline",  # line editing in `vlm-course chat`, where the platform has it (stdlib on Unix)
}


def _imports_of(source: str) -> set[str]:
    """Absolute module names a piece of Python imports (`import x.y` -> x.y, `from x import y` -> x and x.y),
    plus the names it looks up with importlib.util.find_spec("...")."""
    import ast

    # IPython magics and shell lines are not Python; drop them before parsing.
    source = "\n".join(ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!")))
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "find_spec"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def _package_imports_of(source_file: Path, module: str) -> set[str]:
    """Like _imports_of for a module of the package, with its relative imports made absolute."""
    import ast

    tree = ast.parse(source_file.read_text())
    package = module if source_file.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = _imports_of(source_file.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
            names.add(prefix)
            names |= {f"{prefix}.{alias.name}" for alias in node.names}
    return names


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    path = ROOT.joinpath(*parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def notebook_imports(notebook: Path) -> set[str]:
    """Every module the code cells of `notebook` import."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    return set().union(*(_imports_of(c.source) for c in nb.cells if c.cell_type == "code"))


def third_party_needs(names: set[str]) -> dict[str, str]:
    """{top-level third-party module: who imports it} for `names`, following vlm_course's own modules (and
    their lazy imports) all the way down."""
    needs: dict[str, str] = {}
    seen: set[str] = set()
    todo = collections.deque((name, "the notebook") for name in sorted(names))
    while todo:  # breadth first: a module the notebook imports itself is put down to the notebook
        name, by = todo.popleft()
        top = name.split(".")[0]
        if top == "vlm_course":
            if name in seen:
                continue
            seen.add(name)
            path = _module_file(name)
            if path is not None:  # a module (else an attribute, e.g. `from vlm_course.chat import generate`)
                todo += [(n, name) for n in sorted(_package_imports_of(path, name))]
                parent = name.rsplit(".", 1)[0]
                if parent != name:
                    todo.append((parent, name))  # importing a.b runs a/__init__.py first
        elif top not in sys.stdlib_module_names and top not in NOT_FOR_THE_COURSE and top != "__future__":
            needs.setdefault(top, by)
    return needs


def course_closure(pp: dict) -> set[str]:
    """Normalised names of every distribution `pip install vlm-course[course]` brings: core and course
    requirements, then their requirements (with the extras asked for), read from the installed metadata."""
    from importlib import metadata

    groups = pyproject_requirements(pp)
    todo = groups["core"] + groups["course"]
    done: set[tuple[str, frozenset]] = set()
    while todo:
        req = todo.pop()
        name, extras = norm(req.name), frozenset(req.extras)
        if name == "vlm-course":  # a self-reference such as vlm-course[quant]
            todo += [r for e in extras for r in groups.get(e, [])]
            continue
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: check_course_covers says so for the modules it would provide
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(sub)
    return {name for name, _ in done}


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    from importlib import metadata

    return metadata.packages_distributions()  # reads every installed distribution's file list: once


def check_course_covers(pp: dict, needs: dict[str, dict[str, str]]) -> list[str]:
    """Problems: a module some notebook needs that no distribution of the course extra's closure provides.

    needs: {notebook name: {module: who imports it}}.
    """
    from importlib import metadata

    provided = _packages_distributions()
    closure = course_closure(pp)
    problems = []
    for notebook, modules in sorted(needs.items()):
        for module, by in sorted(modules.items()):
            dists = {norm(d) for d in provided.get(module, [])}
            if not dists:
                problems.append(f"{notebook}: {module} (imported by {by}) is not installed here, so no "
                                "distribution can be matched to it; install the course extra and re-run")
            elif not dists & closure:
                problems.append(f"{notebook}: {module} (imported by {by}) comes from {sorted(dists)}, which "
                                "the core dependencies and the course extra do not install")
    return problems


@functools.lru_cache(maxsize=1)
def _all_notebook_needs() -> dict[str, dict[str, str]]:
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert notebooks, f"no notebooks under {NOTEBOOKS}"
    return {nb.name: third_party_needs(notebook_imports(nb)) for nb in notebooks}


def all_notebook_needs() -> dict[str, dict[str, str]]:
    return copy.deepcopy(_all_notebook_needs())


def test_course_extra_installs_every_notebook_import():
    needs = all_notebook_needs()
    # The reading can fail too: these are imported by the lessons (07 the openai client, 05 the quant
    # backends through load_vlm(quant=...), 09 peft, 06 ipywidgets).
    assert {"openai", "fastapi", "uvicorn"} <= set(needs["07_serving.ipynb"])
    assert {"bitsandbytes", "optimum", "torchao"} <= set(needs["05_quantization_memory.ipynb"])
    assert "peft" in needs["09_fine_tuning.ipynb"] and "ipywidgets" in needs["06_image_qa_app.ipynb"]
    problems = check_course_covers(load_pyproject(), needs)
    absent = [p for p in problems if "is not installed here" in p]
    if absent:  # a partial install cannot say which distribution provides a module (CI installs everything)
        from _need import missing

        missing("; ".join(absent[:3]) + (f" (and {len(absent) - 3} more)" if len(absent) > 3 else ""))
    assert problems == []


def test_course_extra_includes_the_lesson_extras():
    """quant (05), widgets (06), serve and ray (07, 08) are all in course: one install story."""
    groups = pyproject_requirements(load_pyproject())
    course = {norm(r.name) for r in groups["course"]}
    for extra in ("quant", "widgets", "serve", "ray"):
        missing_here = {norm(r.name) for r in groups[extra]} - course
        assert not missing_here, f"the course extra lacks {sorted(missing_here)} from the {extra} extra"


def test_course_check_catches_a_missing_package():
    pp = copy.deepcopy(load_pyproject())
    course = pp["project"]["optional-dependencies"]["course"]
    course[:] = [r for r in course if norm(Requirement(r).name) not in ("openai", "peft")]
    found = "\n".join(check_course_covers(pp, all_notebook_needs()))
    assert "07_serving.ipynb: openai" in found and "09_fine_tuning.ipynb: peft" in found
    assert "06_image_qa_app.ipynb: ipywidgets" not in found


def test_notebook_import_reader():
    source = "%matplotlib inline\nimport os, PIL.Image\nfrom vlm_course.chat import generate\n" \
             "def f():\n    import openai\nimportlib.util.find_spec('ray')\n!pip install x\n"
    assert _imports_of(source) == {"os", "PIL.Image", "vlm_course.chat", "vlm_course.chat.generate", "openai", "ray"}
    needs = third_party_needs({"vlm_course.widgets", "os", "PIL.Image"})
    assert needs["ipywidgets"] == "vlm_course.widgets" and needs["PIL"] == "the notebook" and "os" not in needs
