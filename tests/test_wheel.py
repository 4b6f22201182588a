"""Play Colab as far as this machine can: build the wheel, install it alone into a fresh virtualenv (no
checkout on the path, no editable install), copy notebook 00 alone into an empty folder, and execute it there.
The wheel must carry everything the notebook needs: the tiny model, the reference configs, the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
IGNORED = shutil.ignore_patterns(".venv", ".git", "build", "dist", "runs", "bench-results", "test-output",
                                 "*.egg-info", "__pycache__", ".pytest_cache", ".ipynb_checkpoints")


def run(cmd, **kwargs):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_the_wheel_alone_runs_notebook_00(tmp_path):
    import torch

    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=IGNORED)
    run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", source])
    wheel = next((tmp_path / "dist").glob("vlm_course-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("vlm_course/tiny/model/model.safetensors", "vlm_course/tiny/model/config.json",
                   "vlm_course/tiny/model/tokenizer.json", "vlm_course/data/idefics2-8b-config.json",
                   "vlm_course/testmodel.py"):
        assert needed in names, f"the wheel lacks {needed}"
    assert not any(n.startswith(("tests/", "notebooks/", "solutions/")) for n in names)  # the exercises' solutions stay apart

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])  # no --system-site-packages: nothing from this environment
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLM_COURSE_MODEL", "VLM_COURSE_QUANT",
                                                           "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # torch first, the build this machine already has (as a Colab runtime has its own), then the wheel alone,
    # and what a notebook runtime brings (a kernel and an executor).
    run(pip + [f"torch=={torch.__version__.split('+')[0]}"], env=env)
    run(pip + [wheel, "ipykernel", "nbclient"], env=env)

    colab = tmp_path / "colab"
    colab.mkdir()
    shutil.copy(ROOT / "notebooks" / "00_setup.ipynb", colab)
    where = run([python, "-c", "import vlm_course; print(vlm_course.__file__)"], env=env, cwd=colab)
    assert where.strip().startswith(str(venv)), where
    execute = ("import nbformat, nbclient\n"
               "nb = nbformat.read('00_setup.ipynb', as_version=4)\n"
               "nbclient.NotebookClient(nb, timeout=600, kernel_name='python3').execute()\n"
               "outputs = [o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.outputs]\n"
               "print(''.join(outputs))\n")
    out = run([python, "-c", execute], env=env, cwd=colab, timeout=900)
    assert "tiny-idefics2" in out and "Idefics2ForConditionalGeneration" in out
