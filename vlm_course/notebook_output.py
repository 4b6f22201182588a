"""Count what a notebook shows besides its lesson: stderr outputs and progress bars (issue 19).

Each notebook is executed in a fresh kernel, as nbmake does (nbclient, the notebook's folder as the
working directory), and its outputs are read back:

- stderr: every output of the stderr stream (Jupyter draws them red). Warnings and library logs land
  there; a lesson should show none.
- progress bars: every tqdm bar, drawn as a widget (tqdm.auto in Jupyter with ipywidgets) or as text
  on a stream, and the HTML bar of transformers' Trainer. A widget's final text is read from the widget state nbclient stores, so the time the
  work under the bar took is known ("[00:00<00:00, ...]" is under a second: such a bar flashes past).

    python -m vlm_course.notebook_output notebooks/00_setup.ipynb ... [--json out.json]
    vlm-course bench --suite notebook-output        (every notebook; results in bench-results/)
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# tqdm's meter: "desc: 100%|####| 73/73 [00:01<00:00, 52.1it/s]" (or "73/73 [00:00, ...]" without a total).
_METER = re.compile(r"(?P<desc>[^\r\n|]*?):?\s*(?P<pct>\d+%)?\|[^|\r\n]*\|\s*(?P<n>[\d.]+[kMG]?)(?:/(?P<total>[\d.]+[kMG]?))?"
                    r"\s*\[(?P<elapsed>[\d:]+)")
_HTML_METER = re.compile(r"\[\s*\d+/\d+\s+(?P<elapsed>[\d:]+)")
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"


@dataclass
class Bar:
    """One progress bar a notebook drew."""

    cell: int
    desc: str
    elapsed_s: int | None  # whole seconds tqdm reported (None: the widget's final state was not stored)
    text: str

    @property
    def sub_second(self) -> bool:
        return self.elapsed_s is not None and self.elapsed_s < 1


@dataclass
class NotebookOutput:
    """What one executed notebook showed besides its lesson."""

    notebook: str
    seconds: float
    stderr: list[dict] = field(default_factory=list)  # {"cell": i, "text": first 300 characters}
    bars: list[Bar] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # error outputs (a cell that raised)

    @property
    def sub_second_bars(self) -> list[Bar]:
        return [bar for bar in self.bars if bar.sub_second]

    def row(self) -> dict:
        return {"notebook": Path(self.notebook).stem, "stderr outputs": len(self.stderr),
                "progress bars": len(self.bars), "bars under 1 s": len(self.sub_second_bars),
                "error outputs": len(self.errors), "seconds": round(self.seconds, 1)}


def _seconds(clock: str) -> int:
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total


def _text_bars(cell: int, text: str) -> list[Bar]:
    """Bars drawn as text: each line (a bar redraws itself with \\r) whose last state is a tqdm meter."""
    bars = []
    for line in text.split("\n"):
        last = line.split("\r")[-1] or (line.rstrip("\r").split("\r")[-1] if "\r" in line else "")
        match = _METER.search(last)
        if match:
            bars.append(Bar(cell, match["desc"].strip(), _seconds(match["elapsed"]), last.strip()[:200]))
    return bars


def _widget_text(model_id: str, state: dict) -> str | None:
    """The text of a tqdm widget (an HBox of HTML, progress, HTML) in its stored final state."""
    box = state.get(model_id, {}).get("state", {})
    parts = []
    for child in box.get("children", []):
        child_id = child.removeprefix("IPY_MODEL_") if isinstance(child, str) else None
        child_state = state.get(child_id, {}).get("state", {})
        if isinstance(child_state.get("value"), str):
            parts.append(html.unescape(re.sub(r"<[^>]+>", "", child_state["value"])).replace("\u2007", " "))
        elif "value" in child_state:
            parts.append("|#|")  # the bar itself: tqdm's text meter has it between two |
    return "".join(parts) if parts else None


def inspect(nb, name: str = "", seconds: float = 0.0) -> NotebookOutput:
    """Read stderr outputs and progress bars out of an executed notebook (an nbformat node)."""
    result = NotebookOutput(name, seconds)
    state = nb.metadata.get("widgets", {}).get(_WIDGET_STATE_MIME, {}).get("state", {})
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                text = out.get("text", "")
                bars = _text_bars(index, text)
                result.bars += bars
                if out.get("name") == "stderr":
                    result.stderr.append({"cell": index, "text": text[:300]})
            elif kind == "error":
                result.errors.append(f"cell {index}: {out.get('ename')}: {out.get('evalue', '')[:200]}")
            elif kind in ("display_data", "execute_result") and "<progress" in str(out.get("data", {}).get("text/html", "")):
                # transformers' Trainer in a notebook draws an HTML <progress> bar: "[250/250 01:05, Epoch 1/1]"
                page = str(out["data"]["text/html"])
                match = _HTML_METER.search(page)
                result.bars.append(Bar(index, "Trainer", _seconds(match["elapsed"]) if match else None,
                                       re.sub(r"<[^>]+>|\s+", " ", page).strip()[:200]))
            elif kind in ("display_data", "execute_result") and _WIDGET_MIME in out.get("data", {}):
                model_id = out["data"][_WIDGET_MIME].get("model_id", "")
                shown = out["data"].get("text/plain", "")
                final = _widget_text(model_id, state)
                match = _METER.search(final or "") or _METER.search(shown)
                if match or "it/s" in shown or "%|" in shown:
                    elapsed = _seconds(match["elapsed"]) if match and final else None
                    desc = match["desc"].strip() if match else shown[:60]
                    result.bars.append(Bar(index, desc, elapsed, (final or shown)[:200]))
    return result


def measure(path: str | os.PathLike, timeout: int = 900, env: dict | None = None,
            save_to: str | os.PathLike | None = None) -> NotebookOutput:
    """Execute one notebook in a fresh kernel (its folder as working directory) and inspect its outputs.

    A cell that raises does not stop the count: the error is listed and the cells after it still run.
    save_to: a folder to write the executed notebook to (to read its outputs)."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    from .notebook_memory import kernel_environment

    start = time.perf_counter()
    with kernel_environment(env):
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                store_widget_state=True, resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    seconds = time.perf_counter() - start
    if save_to is not None:
        Path(save_to).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(save_to) / path.name)
    return inspect(nb, str(path), seconds)


def table(results: list[NotebookOutput]):
    """One row a notebook (a pandas DataFrame)."""
    import pandas as pd

    return pd.DataFrame([r.row() for r in results]).set_index("notebook")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlm_course.notebook_output", description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="*", help="default: every notebook in notebooks/")
    p.add_argument("--json", default=None, help="write every stderr text and bar to this file")
    p.add_argument("--model", default=None, help="VLM_COURSE_MODEL for the kernels (e.g. build/test-model)")
    p.add_argument("--timeout", type=int, default=900, help="seconds a cell may run")
    p.add_argument("--save", default=None, help="a folder to write the executed notebooks to")
    args = p.parse_args(argv)
    paths = args.notebooks or sorted(str(p) for p in Path("notebooks").glob("*.ipynb"))
    env = {"VLM_COURSE_MODEL": str(Path(args.model).resolve())} if args.model else {}
    from tqdm.auto import tqdm

    results = []
    for path in tqdm(paths, desc="executing notebooks", unit="notebook"):
        results.append(measure(path, timeout=args.timeout, env=env, save_to=args.save))
    print(table(results).to_string())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([{**asdict(r), "bars": [asdict(b) for b in r.bars], **r.row()}
                                               for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
