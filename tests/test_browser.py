"""The image Q&A app used the way a person uses it: served by Voila, clicked in Debian's chromium.

Voila runs a one-cell notebook (written to a temporary folder) on 127.0.0.1 with this venv's
Python as its kernel; Playwright's Python package drives /usr/bin/chromium (no `playwright
install`). The test sees the empty preview say "No image yet" (no broken-image icon, no "null"
tooltip); draws a scene with a known seed, asks "What do we see in this image?" with the Ask button,
waits for the streamed answer and compares it with the scene's true answer; asks a follow-up about a
second scene by pressing Enter in the question box; clears, uploads a PNG of a third scene through the
file chooser and asks about it; tries an empty question and a failing URL and sees the messages; and
saves screenshots to test-output/browser/ (image_qa_app_empty.png before any image,
image_qa_app_conversation.png after the follow-up, image_qa_app.png at the end).

The README's picture of the app, docs/app.png, is the app after the follow-up (two real answers),
written by this test when VLM_COURSE_APP_SCREENSHOT names the file:

    HF_HUB_OFFLINE=1 VLM_COURSE_APP_SCREENSHOT=docs/app.png .venv/bin/python -m pytest tests/test_browser.py

Without chromium the test skips with how to install it, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _need import missing  # skips outside CI, fails in CI

from vlm_course.shapes import random_scene

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "test-output" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
FIRST_SEED = 7
# Where to save the picture of the app for the README (unset: only test-output/browser/); under this size.
APP_SCREENSHOT = os.environ.get("VLM_COURSE_APP_SCREENSHOT")
MAX_SCREENSHOT_BYTES = 150_000
QUESTION = "What do we see in this image?"
FOLLOW_UP = "And how about this image?"
APP_NOTEBOOK = '''\
import os
from transformers.utils import logging
from vlm_course.widgets import image_qa_app

logging.disable_progress_bar()  # a page shows the app alone, without the loading bar

app = image_qa_app(device="cpu", seed=int(os.environ["VLM_COURSE_APP_SEED"]))
app'''


def need(condition: bool, what: str) -> None:
    """Skip when something the browser test needs is missing, but fail in CI (CI=true; .ci/run installs chromium)."""
    if not condition:
        missing(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"voila exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"voila did not listen on port {port} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def voila_app(tmp_path):
    """Voila serving the app on 127.0.0.1 with this venv's kernel; killed (with its kernel) at the end."""
    import nbformat

    need(_has("voila"), "voila is not installed in this venv: pip install 'vlm-course[dev]'")
    notebook = tmp_path / "image_qa_app.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(APP_NOTEBOOK)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, notebook)
    # JUPYTER_PATH comes first in Jupyter's search path: "python3" here is this venv's interpreter,
    # whatever kernels the user has installed elsewhere.
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    port = free_port()
    env = dict(os.environ, JUPYTER_PATH=str(tmp_path / "jupyter"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE", VLM_COURSE_APP_SEED=str(FIRST_SEED),
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    log = tmp_path / "voila.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
             "--Voila.root_dir=" + str(tmp_path)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, process, log)
        yield f"http://127.0.0.1:{port}/", log
    finally:
        _stop(process)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _stop(process: subprocess.Popen) -> None:
    """End voila and the kernel it started (its own process group), waiting at most ~15 s."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


ANSWERS = ".vlm-history .vlm-assistant .vlm-answer-text"


def wait_for_answer(page, n: int) -> None:
    """Wait until the n-th answer has finished streaming and the app is ready for the next question."""
    from playwright.sync_api import expect

    expect(page.locator(ANSWERS)).to_have_count(n, timeout=120_000)
    expect(page.locator(".vlm-history .vlm-streaming")).to_have_count(0, timeout=120_000)
    expect(page.locator(".vlm-status")).to_contain_text("Done")
    expect(page.locator(".vlm-ask")).to_be_enabled()
    expect(page.locator(".vlm-stop")).to_be_disabled()


@pytest.fixture
def browser_present():
    """Checked before voila starts, so that a machine without a browser skips at once."""
    need(CHROMIUM.exists(), f"no browser at {CHROMIUM}; install Debian's chromium with "
                            "`sudo apt-get update && sudo apt-get install -y chromium`")
    need(_has("playwright"), "the playwright Python package is missing: pip install 'vlm-course[dev]'")


def test_image_qa_app_in_chromium(browser_present, voila_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, log = voila_app
    OUTPUT.mkdir(parents=True, exist_ok=True)
    first, second, third = random_scene(FIRST_SEED), random_scene(FIRST_SEED + 1), random_scene(100 + FIRST_SEED)
    uploaded = tmp_path / "third_scene.png"
    third.draw().save(uploaded)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(url, wait_until="commit", timeout=60_000)  # Voila streams the page while the notebook runs
            try:
                expect(page.locator(".vlm-app")).to_be_visible(timeout=120_000)
            except AssertionError:
                page.screenshot(path=str(OUTPUT / "image_qa_app_failed.png"), full_page=True)
                raise AssertionError(f"the app did not appear; voila log:\n{log.read_text()[-3000:]}") from None
            answers = page.locator(ANSWERS)
            expect(page.locator(".vlm-model")).to_contain_text("Device")

            # Before any image: a box says so, the (empty) image is not drawn, and no tooltip reads "null".
            expect(page.locator(".vlm-preview-empty")).to_contain_text("No image yet")
            expect(page.locator("img.vlm-preview")).to_be_hidden()
            page.locator(".vlm-app").screenshot(path=str(OUTPUT / "image_qa_app_empty.png"))
            nulls = page.locator('[title="null"]').evaluate_all("els => els.map(e => e.className)")
            assert nulls == [], f"elements whose tooltip reads null: {nulls}"
            expect(page.locator(".vlm-upload")).to_have_attribute("title", "Upload an image file (PNG, JPEG, ...) "
                                                                           "from your computer")

            # Draw the scene with the app's first seed, ask via the suggested question, wait for the answer.
            expect(page.locator(".vlm-seed input")).to_have_value(str(FIRST_SEED))
            page.locator(".vlm-draw").click()
            expect(page.locator(".vlm-caption")).to_contain_text(f"seed {FIRST_SEED}")
            expect(page.locator("img.vlm-preview")).to_be_visible()
            expect(page.locator(".vlm-preview-empty")).to_be_hidden()
            assert page.locator("img.vlm-preview").get_attribute("src")  # the drawing is shown
            page.locator(".vlm-suggestion", has_text=QUESTION).click()
            expect(page.locator(".vlm-question input")).to_have_value(QUESTION)
            page.locator(".vlm-ask").click()
            wait_for_answer(page, 1)
            first_answer = answers.nth(0).inner_text().strip()

            # A follow-up about a second scene (the Seed box moved on to the next seed), asked with Enter.
            expect(page.locator(".vlm-seed input")).to_have_value(str(FIRST_SEED + 1))
            page.locator(".vlm-draw").click()
            expect(page.locator(".vlm-caption")).to_contain_text(f"seed {FIRST_SEED + 1}")
            page.locator(".vlm-question input").fill(FOLLOW_UP)
            page.locator(".vlm-question input").press("Enter")
            wait_for_answer(page, 2)
            expect(page.locator(".vlm-history .vlm-user")).to_have_count(2)
            expect(page.locator(".vlm-question input")).to_have_value("")  # the question went, as with Ask
            second_answer = answers.nth(1).inner_text().strip()
            page.screenshot(path=str(OUTPUT / "image_qa_app_conversation.png"), full_page=True)
            if APP_SCREENSHOT:  # the README's picture: the app alone, two real answers in its conversation
                page.locator(".vlm-app").screenshot(path=APP_SCREENSHOT)
                size = Path(APP_SCREENSHOT).stat().st_size
                assert size < MAX_SCREENSHOT_BYTES, f"{APP_SCREENSHOT} is {size:,} bytes, over {MAX_SCREENSHOT_BYTES:,}"

            # Clear, then a real upload through the file chooser: a PNG of a third scene, in a new conversation.
            page.locator(".vlm-clear").click()
            expect(page.locator(".vlm-history .vlm-turn")).to_have_count(0)
            with page.expect_file_chooser() as chooser:
                page.locator(".vlm-upload").click()
            chooser.value.set_files(str(uploaded))
            expect(page.locator(".vlm-caption")).to_contain_text("Uploaded third_scene.png")
            page.locator(".vlm-question input").fill(QUESTION)
            page.locator(".vlm-ask").click()
            wait_for_answer(page, 1)
            third_answer = answers.nth(0).inner_text().strip()

            # Bad input: an empty question, then a URL that fails. Messages, no traceback, the app stays.
            page.locator(".vlm-ask").click()
            expect(page.locator(".vlm-message")).to_contain_text("Type a question first")
            page.locator(".vlm-url input").fill(f"http://127.0.0.1:{free_port()}/missing.png")
            page.locator(".vlm-load-url").click()
            expect(page.locator(".vlm-message")).to_contain_text("Could not download")
            expect(page.locator(".vlm-message")).to_contain_text("In this app you can upload an image file")
            expect(page.locator(".vlm-caption")).to_contain_text("Uploaded third_scene.png")  # the image stays
            expect(answers).to_have_count(1)
            assert "Traceback" not in page.locator(".vlm-app").inner_text()
            page.screenshot(path=str(OUTPUT / "image_qa_app.png"), full_page=True)
        finally:
            browser.close()
    # Last, so that every behaviour above is checked even while the model still answers wrongly.
    assert (first_answer, second_answer, third_answer) == (first.describe(), second.describe(), third.describe())
