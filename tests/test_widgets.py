"""The image Q&A app driven from Python the way a person drives it: set values, click, read the app.

The model is the real tiny Idefics2; answers are compared with the scene's true answer or with
`chat.generate` on the same conversation (streaming must equal generating).
"""

from __future__ import annotations

import functools
import http.server
import io
import socket
import threading
import time
from datetime import datetime, timezone

import pytest
from PIL import Image

from _need import need  # skips outside CI, fails in CI

need("ipywidgets")

from vlm_course.chat import generate  # noqa: E402
from vlm_course.shapes import random_scene  # noqa: E402
from vlm_course.widgets import SUGGESTED_QUESTIONS, ImageQAApp, image_qa_app  # noqa: E402

DESCRIBE = "What do we see in this image?"
NOW = datetime.now(timezone.utc)


@pytest.fixture
def app(vlm):
    return image_qa_app(vlm, seed=11)


def roles(app):
    return [m["role"] for m in app.history]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket closes


@pytest.fixture
def image_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path (a PNG of a drawn scene and a text file)."""
    random_scene(5).draw().save(tmp_path / "scene.png")
    (tmp_path / "notes.txt").write_text("not an image")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_app_shows_model_device_and_every_part(app, vlm):
    assert app.vlm is vlm
    assert str(vlm.device) in app.model_info.value and str(vlm.name) in app.model_info.value
    classes = {c for w in app.widget.children for c in getattr(w, "_dom_classes", ())}
    assert "vlm-model" in classes
    assert [b.description for b in app.suggestions] == list(SUGGESTED_QUESTIONS)
    assert not app.ask_button.disabled and app.stop_button.disabled
    bundle = app._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_draw_ask_streams_the_answer_into_the_history(app, vlm):
    app.seed.value = 21
    app.draw_button.click()
    scene = random_scene(21)
    assert app.scene == scene and "seed 21" in app.caption.value and app.seed.value == 22
    assert app.preview.value[:4] == b"\x89PNG"

    app.suggestions[0].click()  # a suggested question fills the box
    assert app.question.value == DESCRIBE
    app.ask_button.click()
    assert app.wait(60), "the answer did not finish"
    assert roles(app) == ["user", "assistant"]
    first = app.history[0]["content"]
    assert first[0]["type"] == "image" and first[0]["image"].tobytes() == scene.draw().tobytes()
    expected = generate(vlm, app.history[:1], max_new_tokens=64).text
    assert app.answer == expected == app.history[1]["content"][0]["text"]
    assert app.status.value.startswith("Done:") and not app.ask_button.disabled and app.stop_button.disabled
    assert app.question.value == "" and app.error == ""
    assert "vlm-assistant" in app.transcript.value and "vlm-streaming" not in app.transcript.value


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_answer_is_the_scenes_true_answer(app, seed):
    scene = app.draw_scene(seed)
    assert app.ask(DESCRIBE) and app.wait(60)
    assert app.answer == scene.describe()


def test_follow_ups_keep_the_conversation(app, vlm):
    first = app.draw_scene(31)
    app.ask(DESCRIBE)
    app.wait(60)
    # A new image goes with the next question, as in the course's multi-turn training data.
    second = app.draw_scene(32)
    assert "next question" in app.caption.value
    app.ask("And how about this image?")
    app.wait(60)
    assert roles(app) == ["user", "assistant"] * 2
    assert app.history[2]["content"][0]["type"] == "image" and "next question" not in app.caption.value
    assert app.history[0]["content"][0]["image"].tobytes() == first.draw().tobytes()
    assert app.answer == generate(vlm, app.history[:3]).text
    assert app.answer == second.describe()
    # A text-only follow-up: the model sees the whole history, the image is not sent again.
    app.question.value = "How many shapes are there?"
    app.ask_button.click()
    app.wait(60)
    assert roles(app) == ["user", "assistant"] * 3
    assert [p["type"] for p in app.history[4]["content"]] == ["text"]
    assert app.answer == generate(vlm, app.history[:5]).text


def test_clear_starts_a_new_conversation_with_the_same_image(app):
    app.draw_scene(41)
    app.ask(DESCRIBE)
    app.wait(60)
    app.clear_button.click()
    assert app.history == [] and app.answer == "" and "Your conversation appears here" in app.transcript.value
    app.ask(DESCRIBE)
    app.wait(60)
    assert roles(app) == ["user", "assistant"] and app.history[0]["content"][0]["type"] == "image"


def test_settings_reach_generation(app, vlm):
    app.draw_scene(51)
    app.max_new_tokens.value = 2
    assert app.settings() == {"max_new_tokens": 2, "temperature": 0.0, "top_p": 1.0}
    app.ask("Describe this image in detail.")
    app.wait(60)
    reply = generate(vlm, app.history[:1], max_new_tokens=2)
    assert app.answer == reply.text and reply.usage.completion_tokens == 2
    assert app.status.value.startswith("Done: 2 tokens")


def assert_says_what_the_app_takes(error: str) -> None:
    """A URL error names what the app can take, and no advice it cannot follow (a path, a data URI, ...)."""
    assert "upload" in error.lower() and "http(s)" in error and "random scene" in error, error
    for advice in ("local path", "send the image", "as a data URI", "raise the timeout", "operator"):
        assert advice not in error, (advice, error)


def test_enter_in_the_question_box_asks(app, vlm):
    app.draw_scene(23)
    app.question.value = DESCRIBE
    # What the browser sends the Text widget when Enter is pressed in it (the browser test presses the key).
    app.question._handle_custom_msg({"event": "submit"}, [])
    assert app.wait(60) and roles(app) == ["user", "assistant"]
    assert app.answer == generate(vlm, app.history[:1], max_new_tokens=64).text  # asked with the scene
    assert app.question.value == ""
    app.question._handle_custom_msg({"event": "submit"}, [])  # Enter in an empty box: a message, no turn
    assert "Type a question first" in app.error and len(app.history) == 2


def test_the_preview_says_no_image_yet_until_there_is_one(app):
    # An empty Image widget is a broken-image icon in the browser: hidden, with a box that says why.
    assert app.preview.layout.display == "none" and app.empty_preview.layout.display != "none"
    assert "No image yet" in app.empty_preview.value and bytes(app.preview.value) == b""
    assert app.upload.tooltip and app.upload.tooltip != "null"
    app.draw_scene(3)
    assert app.preview.layout.display != "none" and app.empty_preview.layout.display == "none"
    assert bytes(app.preview.value).startswith(b"\x89PNG")


def test_url_errors_say_what_the_app_can_take(app):
    for url in ["", "file:///tmp/cat.png", "ftp://example.org/cat.png", "/home/me/cat.png", "https://",
                f"http://127.0.0.1:{closed_port()}/cat.png", "http://user:pw@127.0.0.1/cat.png"]:
        assert not app.load_url(url)
        assert_says_what_the_app_takes(app.error)
    assert app.image is None and app.empty_preview.layout.display != "none"


def test_bad_input_shows_a_message_and_the_app_keeps_working(app, image_server, vlm):
    # Nothing to ask about yet.
    app.ask(DESCRIBE)
    assert "Choose an image first" in app.message.value and app.history == []
    app.draw_scene(61)
    before = app.preview.value
    # Empty question.
    app.question.value = "   "
    app.ask_button.click()
    assert "Type a question first" in app.error and app.history == [] and not app.busy
    # A URL that fails (nothing listening), a 404, a text file, and something that is not a URL.
    for url, words in [(f"http://127.0.0.1:{closed_port()}/cat.png", "Could not download"),
                       (f"{image_server}/missing.png", "HTTP 404"),
                       (f"{image_server}/notes.txt", "is text, not an image"),
                       ("my holiday photo", "not a web address")]:
        app.url.value = url
        app.load_url_button.click()
        assert words in app.error, (url, app.error)
        assert_says_what_the_app_takes(app.error)
        assert "color:#b00020" in app.message.value and "Traceback" not in app.message.value
        assert app.preview.value == before and app.scene == random_scene(61)  # the old image stays
    # An upload that is not an image.
    app.upload.value = ({"name": "notes.txt", "type": "text/plain", "size": 5, "content": memoryview(b"hello"),
                         "last_modified": NOW},)
    assert "notes.txt" not in app.caption.value and app.preview.value == before
    assert "(5 bytes) is text, not an image" in app.error and "PNG, JPEG" in app.error
    # ...and everything still works: a good URL, a good upload, a question.
    app.url.value = f"{image_server}/scene.png"
    app.load_url_button.click()
    assert app.error == "" and app.scene is None and "From http://127.0.0.1" in app.caption.value
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buf, format="PNG")
    app.upload.value = ({"name": "red.png", "type": "image/png", "size": len(buf.getvalue()),
                         "content": memoryview(buf.getvalue()), "last_modified": NOW},)
    assert app.error == "" and app.image.size == (40, 30) and "Uploaded red.png" in app.caption.value
    app.ask(DESCRIBE)
    assert app.wait(60) and roles(app) == ["user", "assistant"]
    assert app.answer == generate(vlm, app.history[:1], max_new_tokens=64).text  # the uploaded image was used


def test_stop_cancels_a_running_answer(vlm):
    """Ask returns at once (the kernel stays free), and Stop ends generation early.

    The real model is slowed with a forward hook (0.2 s a step) so that Stop surely lands mid-answer.
    """
    app = ImageQAApp(vlm, max_new_tokens=200)
    app.draw_scene(71)
    full = generate(vlm, [{"role": "user", "content": [{"type": "image", "image": app.image},
                                                       {"type": "text", "text": "Describe this image in detail."}]}],
                    max_new_tokens=200)
    assert full.usage.completion_tokens >= 4, "the test needs an answer of several tokens"
    steps = []
    started = threading.Event()

    def slow(module, args, kwargs):
        steps.append(time.perf_counter())
        started.set()
        time.sleep(0.2)

    handle = vlm.model.register_forward_pre_hook(slow, with_kwargs=True)
    try:
        app.question.value = "Describe this image in detail."
        app.ask_button.click()  # returns while the answer is being generated
        assert app.busy and app.ask_button.disabled and not app.stop_button.disabled
        app.ask_button.click()  # a second Ask while busy is refused with a message
        assert "Still answering" in app.error
        assert started.wait(60), "generation never started"  # wait until it has really started
        app.stop_button.click()
        assert app.wait(10), "Stop did not end the answer"
        stream_steps = len(steps)
    finally:
        handle.remove()
    assert app.status.value.startswith("Stopped")
    assert stream_steps < full.usage.completion_tokens  # generation really ended early
    assert full.text.startswith(app.answer) and len(app.answer) < len(full.text)
    assert not app.ask_button.disabled and app.stop_button.disabled
    if app.answer:  # a partial answer is kept, as the assistant's turn; an empty one is dropped with its question
        assert roles(app) == ["user", "assistant"] and app.history[1]["content"][0]["text"] == app.answer
    else:
        assert roles(app) == []
    # The app keeps working after a stop.
    app.clear()
    app.ask("Describe this image in detail.")
    assert app.wait(60) and app.answer == full.text


def test_a_failure_during_generation_is_a_message_not_a_traceback(app, vlm):
    """A real failure inside the model's forward pass (injected with a hook) reaches the app as a message."""
    app.draw_scene(81)

    def fail(module, args, kwargs):
        raise RuntimeError("out of memory (injected by the test)")

    handle = vlm.model.register_forward_pre_hook(fail, with_kwargs=True)
    try:
        assert app.ask(DESCRIBE)
        assert app.wait(30)
    finally:
        handle.remove()
    assert "Generation failed" in app.error and "injected by the test" in app.error
    assert app.status.value == "Error." and not app.ask_button.disabled and app.stop_button.disabled
    assert app.history == [] and "next question" not in app.caption.value  # the question was taken back
    assert app.ask(DESCRIBE) and app.wait(60) and roles(app) == ["user", "assistant"]  # and it works again
    assert app.history[0]["content"][0]["type"] == "image"  # the image went with the retried question
