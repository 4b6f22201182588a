"""`expect_error`, which notebook cells use to show an error, and the rule that they use it.

A bare try/except in a notebook passes silently once the error it demonstrates stops happening;
`expect_error` fails the cell instead. The last test keeps notebooks from drifting back.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from vlm_course.errors import BackendError, ImageError, VLMCourseError
from vlm_course.exercises import expect_error

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_prints_the_expected_error_and_swallows_it(capsys):
    with expect_error(ImageError, label="a bad image") as caught:
        raise ImageError("not an image: try a PNG")
    assert isinstance(caught.error, ImageError)
    assert capsys.readouterr().out == "a bad image: ImageError: not an image: try a PNG\n"


def test_a_subclass_counts_and_its_own_name_is_printed(capsys):
    with expect_error(VLMCourseError):
        raise BackendError("no flash-attn here")
    assert capsys.readouterr().out == "BackendError: no flash-attn here\n"


def test_fails_when_nothing_is_raised():
    with pytest.raises(AssertionError, match=r"Expected ImageError or BackendError to be raised \(x\)"):
        with expect_error((ImageError, BackendError), label="x"):
            pass


def test_a_different_error_propagates_untouched():
    with pytest.raises(KeyError):
        with expect_error(ImageError):
            raise KeyError("model")


def test_match_checks_the_message():
    with expect_error(ValueError, match="flash_attention_2"):
        raise ValueError("backend 'flash_attention_2' is not available")
    with pytest.raises(AssertionError, match="does not match"):
        with expect_error(ValueError, match="flash_attention_2"):
            raise ValueError("something else")


def test_show_and_width_shape_the_printed_text(capsys):
    with expect_error(RuntimeError, show=lambda e: str(e).splitlines()[0], width=10):
        raise RuntimeError("first line is long\nsecond line")
    assert capsys.readouterr().out == "RuntimeError: first ...\n"  # cut between words, not "first l..."
    with expect_error(RuntimeError, width=12):
        raise RuntimeError("unbreakablewordthatgoeson")
    assert capsys.readouterr().out == "RuntimeError: unbreaka ...\n"


def _handlers(source: str):
    python = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())  # IPython magics
    return [node for node in ast.walk(ast.parse(python)) if isinstance(node, ast.ExceptHandler)]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_show_errors_with_expect_error(notebook):
    """An `except` in a notebook would hide an error that stopped happening: use expect_error."""
    cells = json.loads(notebook.read_text())["cells"]
    offenders = [i for i, cell in enumerate(cells)
                 if cell["cell_type"] == "code" and _handlers("".join(cell["source"]))]
    assert offenders == [], f"{notebook.name}: cells {offenders} catch an exception; use vlm_course.exercises.expect_error"


def test_the_notebook_rule_sees_an_except():
    assert _handlers("try:\n    f()\nexcept ValueError as e:\n    print(e)\n")
    assert not _handlers("try:\n    f()\nfinally:\n    g()\n")
