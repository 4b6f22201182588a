"""The lessons show no library noise: no stderr output and no progress bar for sub-second work.

The counter (vlm_course/notebook_output.py) is checked on hand-made outputs first; then each lesson whose
output issue 19 cleaned up is executed in a fresh kernel, as nbmake does, and its outputs are read back.
Before that work, 00 drew one "Loading weights" bar for a 0.1 s load and 05 stacked about 22 of them.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from vlm_course.notebook_output import inspect

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
QUIET = ["00_setup", "01_chat_templates", "02_multi_image", "04_attention", "08_image_to_text", "09_fine_tuning"]


def _notebook(*outputs, widgets=None):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("pass")
    cell.outputs = [nbformat.from_dict(o) for o in outputs]
    nb.cells.append(cell)
    if widgets:
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": widgets}}
    return nb


def _widget_bar(model_id: str, desc: str, right: str):
    """A tqdm.notebook bar as nbclient stores it: an HBox of HTML, FloatProgress, HTML."""
    state = {model_id: {"state": {"children": [f"IPY_MODEL_{model_id}a", f"IPY_MODEL_{model_id}b",
                                               f"IPY_MODEL_{model_id}c"]}},
             f"{model_id}a": {"state": {"value": desc}}, f"{model_id}b": {"state": {"value": 73.0, "max": 73.0}},
             f"{model_id}c": {"state": {"value": right}}}
    output = {"output_type": "display_data", "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": model_id, "version_major": 2,
                                                                     "version_minor": 0},
                       "text/plain": f"{desc}|          | 0/73 [00:00<?, ?it/s]"}}
    return output, state


def test_counts_stderr_text_bars_and_widget_bars_with_their_duration():
    quick, quick_state = _widget_bar("w1", "Loading weights: 100%", "&#x2007;73/73&#x2007;[00:00&lt;00:00,&#x2007;2600.75it/s]")
    slow, slow_state = _widget_bar("w2", "training: 100%", " 250/250 [01:05&lt;00:00,  3.84it/s]")
    nb = _notebook({"output_type": "stream", "name": "stderr", "text": "Failed to load /x/_C_mxfp8.so\n"},
                   {"output_type": "stream", "name": "stderr",
                    "text": "eval:  50%|█████     | 1/2 [00:00<00:00, 9.1it/s]\reval: 100%|██████████| 2/2 [00:03<00:00, 1.1it/s]\n"},
                   {"output_type": "stream", "name": "stdout", "text": "50%| of the answers | were right\n"},
                   quick, slow, widgets={**quick_state, **slow_state})
    result = inspect(nb, "synthetic")
    assert len(result.stderr) == 2
    assert [(b.desc, b.elapsed_s) for b in result.bars] == [("eval", 3), ("Loading weights", 0), ("training", 65)]
    assert [b.desc for b in result.sub_second_bars] == ["Loading weights"]
    assert result.row()["bars under 1 s"] == 1


def test_a_quiet_notebook_counts_zero():
    nb = _notebook({"output_type": "stream", "name": "stdout", "text": "8 of 8 descriptions exactly right\n"},
                   {"output_type": "execute_result", "execution_count": 1, "metadata": {},
                    "data": {"text/plain": "VLM('tiny-idefics2', device=cpu)"}})
    result = inspect(nb, "quiet")
    assert (result.stderr, result.bars, result.errors) == ([], [], [])


@pytest.mark.parametrize("name", QUIET)
def test_lesson_shows_no_stderr_and_no_bar_for_sub_second_work(name, monkeypatch):
    from vlm_course.notebook_output import measure

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = measure(NOTEBOOKS / f"{name}.ipynb")
    assert result.errors == [], result.errors
    assert result.stderr == [], f"{name} wrote to stderr: {result.stderr}"
    assert result.sub_second_bars == [], f"{name} drew bars for sub-second work: {result.sub_second_bars}"


def test_bench_suite_runs_a_real_kernel_and_counts_what_it_showed(tmp_path):
    """End to end through `vlm-course bench --suite notebook-output`: a kernel that writes to stderr, draws a
    bar for a few microseconds of work and loads the tiny model (whose weight-loading bar must not show)."""
    import json

    from vlm_course import bench

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('import sys\nprint("noise", file=sys.stderr)'),
                nbformat.v4.new_code_cell('from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc="quick"):\n    pass'),
                nbformat.v4.new_code_cell('from vlm_course.models import load_vlm\nvlm = load_vlm(device="cpu")\nvlm')]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    assert bench.main(["--suite", "notebook-output", "--notebooks", str(path), "--out", str(tmp_path), "--name", "out"]) == 0
    [row] = json.loads((tmp_path / "out.json").read_text())
    assert [s["cell"] for s in row["stderr"]] == [0]
    assert [(b["desc"], b["elapsed_s"]) for b in row["bars"]] == [("quick", 0)]  # and no "Loading weights"
    assert row["errors"] == []
