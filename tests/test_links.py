"""One repository URL (pyproject.toml [project.urls]) and what is made from it: every notebook's identical
Colab install cell, and a Colab and a Binder badge per notebook in the README."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from vlm_course.links import badges, install_cell, repository_url

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_repository_url_is_set_once_in_pyproject():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Repository"] == repository_url()
    assert repository_url().startswith("https://github.com/")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_starts_with_the_same_install_cell_and_parameters(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == install_cell(), (
        f"{path.name}: the first code cell must be vlm_course.links.install_cell() (run: python -m vlm_course.links)")
    assert f"git+{repository_url()}" in code[0].source
    params = code[1]
    assert "parameters" in params.metadata.get("tags", []), f"{path.name}: the second code cell is tagged parameters"
    assert 'os.environ.get("VLM_COURSE_MODEL"' in params.source and "MODEL_ID =" in params.source
    assert 'os.environ.get("VLM_COURSE_QUANT")' in params.source and "QUANT =" in params.source


def test_the_readme_has_a_colab_and_a_binder_badge_per_notebook():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in NOTEBOOKS if badges(p.name) not in readme]
    assert not missing, f"README.md lacks the badges of {missing}: vlm_course.links.badges(name) gives them"
    assert "colab.research.google.com/github/vlm-course/vlm-course/blob/main/notebooks/00_setup.ipynb" in readme
