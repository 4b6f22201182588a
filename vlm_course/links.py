"""Where the course lives, and what is made from it: the notebooks' first cell and the README's badges.

The repository's address is written once, in pyproject.toml ([project.urls] Repository). From it:

    install_cell()            the identical first code cell of every notebook: on Colab, pip installs the
                              course from the repository (elsewhere it does nothing)
    badges_table(notebooks)   the README's course map with an "Open in Colab" and a "Binder" badge a notebook

`python -m vlm_course.links` rewrites both from pyproject.toml (after the address changes).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BRANCH = "main"
EXTRAS = "course"  # the one extra with everything the notebooks import (pyproject.toml; Ray included)


def repository_url() -> str:
    """[project.urls] Repository from pyproject.toml in a checkout, else from the installed package's metadata."""
    pyproject = ROOT / "pyproject.toml"
    if pyproject.is_file():
        match = re.search(r'^\[project\.urls\][^\[]*?^Repository\s*=\s*"([^"]+)"', pyproject.read_text(), re.M | re.S)
        if match:
            return match.group(1)
    from importlib.metadata import metadata

    for entry in metadata("vlm-course").get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository":
            return url.strip()
    raise LookupError("No Repository URL in pyproject.toml [project.urls] or in the installed package's metadata.")


def install_cell(url: str | None = None) -> str:
    url = url or repository_url()
    return (
        "# On Colab: install the course from its repository (elsewhere this cell does nothing).\n"
        "import os, subprocess, sys\n"
        'if "google.colab" in sys.modules:\n'
        f'    source = os.environ.get("VLM_COURSE_SOURCE", "vlm-course[{EXTRAS}] @ git+{url}")\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], check=True)'
    )


def _github_path(url: str) -> str:
    match = re.match(r"https://github\.com/([^/]+/[^/]+?)(?:\.git)?/?$", url)
    if not match:
        raise ValueError(f"Colab and Binder badges need a GitHub repository URL, got {url!r}.")
    return match.group(1)


def colab_url(notebook: str, url: str | None = None) -> str:
    return f"https://colab.research.google.com/github/{_github_path(url or repository_url())}/blob/{BRANCH}/notebooks/{notebook}"


def binder_url(notebook: str, url: str | None = None) -> str:
    return f"https://mybinder.org/v2/gh/{_github_path(url or repository_url())}/{BRANCH}?labpath=notebooks%2F{notebook}"


def badges(notebook: str, url: str | None = None) -> str:
    return (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook, url)}) "
            f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder_url(notebook, url)})")


def main() -> int:
    """Rewrite every notebook's first code cell from pyproject.toml's Repository URL."""
    import nbformat

    cell = install_cell()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        if first.source != cell:
            first.source = cell
            nbformat.write(nb, path)
            print(f"updated {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
