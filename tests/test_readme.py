"""The README and docs/results.md say true things a newcomer can act on.

- the course map's time per lesson is each notebook's own "**Time:**" estimate;
- every local file they link or show exists (the app's picture small enough to load quickly);
- every command they name (`vlm-course ...`, `python -m vlm_course...`, `make ...`) exists and takes the
  options written there, so each quoted figure names a command that can produce it.
The checks are functions returning problems, also run on broken copies (so we know each one can fail).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "results.md"]
MAX_IMAGE_BYTES = 150_000


def stated_time(notebook: Path) -> int:
    """Minutes from the notebook's '**Time:** about 20 minutes' (or '~20 minutes') line."""
    text = notebook.read_text()
    match = re.search(r"\*\*Time:\*\*\s*(?:about|~)?\s*(\d+)\s*min", text)
    assert match, f"{notebook.name} states no time ('**Time:** about N minutes')"
    return int(match.group(1))


def check_course_map_times(readme: str, notebooks: list[Path]) -> list[str]:
    problems = []
    for nb in notebooks:
        row = next((ln for ln in readme.splitlines() if ln.startswith("|") and f"(notebooks/{nb.name})" in ln), None)
        if row is None:
            problems.append(f"the course map has no row for {nb.name}")
            continue
        times = re.findall(r"\|\s*(\d+)\s*min\s*\|", row)
        if times != [str(stated_time(nb))]:
            problems.append(f"{nb.name}: the course map says {times or 'no time'}, the lesson says "
                            f"{stated_time(nb)} min")
    return problems


def check_local_links(text: str, base: Path) -> list[str]:
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (base / target.split("#")[0]).resolve()
        if not path.exists():
            problems.append(f"links to {target}, which is not in the repository")
        elif path.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif") and path.stat().st_size > MAX_IMAGE_BYTES:
            problems.append(f"shows {target}, {path.stat().st_size:,} bytes (over {MAX_IMAGE_BYTES:,})")
    return problems


def _parser_for(subcommand: str) -> argparse.ArgumentParser | None:
    from vlm_course import cli

    if subcommand in cli.FORWARDED:
        module = importlib.import_module(cli.FORWARDED[subcommand], "vlm_course")
        return module.build_parser() if hasattr(module, "build_parser") else None
    return cli.build_parser()


def check_commands(text: str) -> list[str]:
    """Problems with the commands named in `text` (in backticks): unknown ones, or options they refuse."""
    from vlm_course import cli

    problems = []
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
    subcommands = set(cli.build_parser()._subparsers._group_actions[0].choices)
    for code in re.findall(r"`([^`\n]+)`", text):
        code = re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", code.strip())  # environment settings before a command
        code = re.sub(r"^(?:\.venv/bin/)", "", code)
        if code.startswith("vlm-course "):
            words = shlex.split(re.sub(r"\[[A-Z]+ \.\.\.\]", "", code))[1:]  # optional placeholders: [IMAGE ...]
            if not words or words[0].startswith(("-", "[")):
                continue
            if words[0] not in subcommands:
                problems.append(f"`{code}`: vlm-course has no subcommand {words[0]!r}")
                continue
            parser = _parser_for(words[0])
            argv = words[1:] if words[0] in cli.FORWARDED else words
            argv = ["x" if re.fullmatch(r"[A-Z]{2,}", w) else w for w in argv]  # placeholders: DIR, IMAGE
            if parser is not None:
                err = io.StringIO()
                try:
                    with contextlib.redirect_stderr(err):
                        parser.parse_args(argv)
                except SystemExit:
                    problems.append(f"`{code}`: refused: {err.getvalue().strip().splitlines()[-1]}")
        elif code.startswith("python -m vlm_course"):
            module = shlex.split(code)[2]
            try:
                importlib.import_module(module)
            except ImportError as e:
                problems.append(f"`{code}`: {module} cannot be imported ({e})")
        elif code.startswith("make "):
            target = shlex.split(code)[1]
            if not target.startswith("-") and "=" not in target and target not in targets:
                problems.append(f"`{code}`: the Makefile has no target {target!r}")
    return problems


# --------------------------------------------------------------------------- the real files


def test_course_map_times_are_the_lessons_own():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert check_course_map_times((ROOT / "README.md").read_text(), notebooks) == []


def test_every_local_link_and_picture_exists():
    for doc in DOCS:
        assert check_local_links(doc.read_text(), doc.parent) == [], doc.name
    assert "](docs/app.png)" in (ROOT / "README.md").read_text(), "the README shows the app"


def test_every_named_command_exists_and_takes_its_options():
    for doc in DOCS:
        assert check_commands(doc.read_text()) == [], doc.name


def test_results_name_a_command_in_every_section():
    results = (ROOT / "docs" / "results.md").read_text()
    sections = re.split(r"^## ", results, flags=re.M)[1:]
    assert sections
    for section in sections:
        assert re.search(r"`(vlm-course [^`]+|python -m vlm_course[^`]*)`|\*\*[Ll]esson \d\d\*\*|lesson \d\d",
                         section), f"the section {section.splitlines()[0]!r} names no command or lesson"


# --------------------------------------------------------------------------- the checks can fail


def test_the_checks_catch_what_they_look_for(tmp_path):
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    readme = (ROOT / "README.md").read_text()
    wrong = re.sub(r"(\(notebooks/03_streaming\.ipynb\)[^\n]*?\|\s*)\d+(\s*min)", r"\g<1>99\2", readme)
    assert wrong != readme
    assert any("03_streaming" in p and "99" in p for p in check_course_map_times(wrong, notebooks))
    assert check_local_links("see ![x](docs/missing.png) and [y](https://example.org)", ROOT) == [
        "links to docs/missing.png, which is not in the repository"]
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(MAX_IMAGE_BYTES))
    assert "over" in check_local_links("![x](big.png)", tmp_path)[0]
    found = check_commands("`vlm-course bench --suite nope` `vlm-course frobnicate` `vlm-course eval --n 5` "
                           "`python -m vlm_course.nowhere` `make nothing` `make lab`")
    assert len(found) == 4, found
    assert "--suite" in found[0] and "frobnicate" in found[1] and "nowhere" in found[2] and "nothing" in found[3]
