"""An image question-answering app built on ipywidgets: one call in a notebook shows it.

    from vlm_course.widgets import image_qa_app
    app = image_qa_app()          # loads the default model (the bundled tiny Idefics2)
    app                           # the last expression of a cell displays the app

Pick an image (upload, URL, or a random scene from the shapes world), ask a question (Ask, or
Enter in the question box), and the answer streams in while the model writes it. The conversation is kept, so follow-up questions
see the earlier turns; a new image goes with the next question (the way the tiny model was
trained: "And how about this image?"). Clear starts over.

Why a background thread: a click handler runs on the kernel's message loop. If it looped over the
stream itself, the kernel could not handle the Stop click (or anything else) until generation
ended. So Ask starts a thread that consumes `chat.stream` and sets widget values as pieces arrive
(ipywidgets 8 sends value changes from any thread), and the handler returns at once; Stop then
runs promptly and calls `Stream.close()`.

The same methods the buttons call are public (`draw_scene`, `load_url`, `ask`, `stop`, `clear`,
`wait`), so a notebook or a test can drive the app from Python.
"""

from __future__ import annotations

import html
import io
import random
import re
import threading
import time
from typing import Any

from .errors import VLMCourseError, missing_extra

SUGGESTED_QUESTIONS = (
    "What do we see in this image?",
    "Describe this image in detail.",
    "How many shapes are there?",
    "And how about this image?",
)
PREVIEW_SIZE = 256  # pixels; the model gets the image as loaded, the preview is only for people
THUMBNAIL_SIZE = 64
UPDATES_PER_SECOND = 20  # at most this many redraws of a streaming answer (each is a message to the browser)
# What a person can do in the app when an image will not load (load_image's own advice is for Python callers).
WHAT_THE_APP_TAKES = ("In this app you can upload an image file, paste a public http(s) image URL, "
                      "or draw a random scene.")
# Advice in load_image / fetch messages that the app cannot follow: a path, a data URI, a longer timeout, the
# server operator's settings. Removed from the messages the app shows, which end with WHAT_THE_APP_TAKES instead.
_ADVICE_FOR_CALLERS = [
    r",? or download the file and pass its local path\.?",
    r" ?Pass the local path itself[^.]*\([^)]*\)\.?",
    r",? or send the image itself",
    r" ?Send the image as a data URI instead\.",
    r" raise the timeout,",
    r" \(an operator can allow private addresses\)",
]


def for_the_app(message: str) -> str:
    """An image error as the app shows it: what went wrong, then what the app itself can take."""
    for pattern in _ADVICE_FOR_CALLERS:
        message = re.sub(pattern, "", message)
    message = message.strip()
    if message and message[-1] not in ".!?":
        message += "."
    return f"{message} {WHAT_THE_APP_TAKES}"


def _widgets():
    try:
        import ipywidgets
    except ImportError:
        raise missing_extra("ipywidgets", "widgets") from None
    return ipywidgets


def _png(image, max_side: int) -> bytes:
    """The image scaled (up or down) to fit max_side, as PNG bytes: small drawings stay crisp."""
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    copy = image.resize(size, resample=3 if scale < 1 else 0)  # BICUBIC down, NEAREST up
    buf = io.BytesIO()
    copy.save(buf, format="PNG")
    return buf.getvalue()


def _no_null_tooltips(root) -> None:
    """Give every widget under `root` whose tooltip is unset the empty tooltip.

    ipywidgets 8 leaves `tooltip` None and its browser side writes that into the label's title, so hovering
    "Seed" or "Temperature" shows a tooltip reading "null"; an empty title shows none.
    """
    todo = [root]
    while todo:
        widget = todo.pop()
        if widget.has_trait("tooltip") and widget.tooltip is None:
            widget.tooltip = ""
        todo += list(getattr(widget, "children", ()))


class ImageQAApp:
    """The app: widgets, the conversation so far, and the generation running in the background.

    State you can read: `history` (the conversation in transformers' format), `answer` (the latest
    answer, growing while it streams), `error` (the last message shown for bad input, or ""),
    `busy` (generating now), `scene` (the last drawn scene, if the image is one), `widget` (the
    root widget to display).
    """

    def __init__(self, vlm, *, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None):
        w = _widgets()
        self.vlm = vlm
        self.history: list[dict] = []
        self.answer = ""
        self.error = ""
        self.scene = None
        self.image = None  # the current image (PIL), as the model will get it
        self._image_sent = False  # has the current image gone into the conversation yet?
        self._stream = None
        self._worker: threading.Thread | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()

        # --- image: upload, URL, random scene; preview -------------------------------------------
        # a tooltip of its own: ipywidgets leaves it None, which the browser shows as "null" (_no_null_tooltips)
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Upload",
                                   tooltip="Upload an image file (PNG, JPEG, ...) from your computer")
        self.url = w.Text(placeholder="https://example.com/picture.png", layout=w.Layout(width="100%"))
        self.load_url_button = w.Button(description="Load URL", icon="link")
        self.seed = w.IntText(value=random.randrange(10_000) if seed is None else seed, description="Seed",
                              style={"description_width": "36px"}, layout=w.Layout(width="120px"))
        self.draw_button = w.Button(description="Draw a random scene", icon="random",
                                    layout=w.Layout(width="auto"))
        # The Image widget stays hidden until there is an image (empty, a browser draws a broken-image icon);
        # until then a box says so.
        self.preview = w.Image(format="png", layout=w.Layout(border="1px solid #ccc", min_height="40px",
                                                              max_width=f"{PREVIEW_SIZE + 2}px", display="none"))
        self.empty_preview = w.HTML(
            '<div style="display:flex;align-items:center;justify-content:center;height:100%;color:#888">'
            "No image yet</div>",
            layout=w.Layout(width=f"{PREVIEW_SIZE}px", height="120px", border="1px dashed #bbb"))
        self._caption = "<i>Upload an image, load a URL, or draw a random scene.</i>"
        self.caption = w.HTML(self._caption)

        # --- conversation -----------------------------------------------------------------------
        self.transcript = w.HTML(layout=w.Layout(max_height="360px", overflow="auto", border="1px solid #ddd",
                                                 padding="4px", min_height="80px"))
        self.question = w.Text(placeholder="Ask a question about the image (Enter asks)", layout=w.Layout(width="auto"))
        self.suggestions = [w.Button(description=q, layout=w.Layout(width="auto"), tooltip="Use this question")
                            for q in SUGGESTED_QUESTIONS]
        self.ask_button = w.Button(description="Ask", button_style="primary", icon="paper-plane")
        self.stop_button = w.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.clear_button = w.Button(description="Clear", icon="trash")
        self.status = w.Label("Ready.")
        self.message = w.HTML()

        # --- settings -----------------------------------------------------------------------------
        style = {"description_width": "120px"}
        self.max_new_tokens = w.IntSlider(value=max_new_tokens, min=1, max=512, description="Max new tokens",
                                          style=style)
        self.temperature = w.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05,
                                         description="Temperature", style=style)
        self.top_p = w.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="Top-p", style=style)
        settings = w.Accordion([w.VBox([
            self.max_new_tokens, self.temperature, self.top_p,
            w.HTML("<small>Temperature 0 is greedy decoding (the same answer every time); "
                   "above 0 the model samples, with top-p.</small>")])])
        settings.set_title(0, "Settings")
        self.model_info = w.HTML(self._model_line())

        for widget, name in [(self.upload, "upload"), (self.url, "url"), (self.load_url_button, "load-url"),
                             (self.seed, "seed"), (self.draw_button, "draw"), (self.preview, "preview"),
                             (self.empty_preview, "preview-empty"),
                             (self.caption, "caption"), (self.transcript, "history"), (self.question, "question"),
                             (self.ask_button, "ask"), (self.stop_button, "stop"), (self.clear_button, "clear"),
                             (self.status, "status"), (self.message, "message"), (self.max_new_tokens, "max-tokens"),
                             (self.temperature, "temperature"), (self.top_p, "top-p"), (settings, "settings"),
                             (self.model_info, "model")]:
            widget.add_class(f"vlm-{name}")
        for button in self.suggestions:
            button.add_class("vlm-suggestion")

        image_column = w.VBox([
            w.HTML("<b>Image</b>"), self.upload,
            w.HBox([self.url, self.load_url_button]),
            w.HBox([self.seed, self.draw_button]),
            self.empty_preview, self.preview, self.caption,
        ], layout=w.Layout(width="340px", margin="0 16px 0 0"))
        chat_column = w.VBox([
            w.HTML("<b>Conversation</b>"), self.transcript,
            w.HBox(self.suggestions, layout=w.Layout(flex_flow="row wrap")),
            self.question,
            w.HBox([self.ask_button, self.stop_button, self.clear_button]),
            self.status, self.message, settings,
        ], layout=w.Layout(flex="1 1 400px", min_width="300px"))
        self.widget = w.VBox([self.model_info, w.HBox([image_column, chat_column],
                                                      layout=w.Layout(flex_flow="row wrap"))],
                             layout=w.Layout(padding="6px"))
        self.widget.add_class("vlm-app")
        _no_null_tooltips(self.widget)

        self.upload.observe(self._on_upload, names="value")
        self.load_url_button.on_click(lambda _: self.load_url())
        self.draw_button.on_click(lambda _: self.draw_scene())
        for button in self.suggestions:
            button.on_click(self._on_suggestion)
        self.ask_button.on_click(lambda _: self.ask())
        # Enter in the question box: the browser sends the Text widget a {"event": "submit"} message. Read here
        # rather than through Text.on_submit, which ipywidgets 8 deprecates (its replacement, observing the
        # value with continuous_update=False, also fires when the box merely loses focus).
        self.question.on_msg(self._on_question_message)
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())
        self._render()

    # --- display -------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _model_line(self) -> str:
        v = self.vlm
        dtype = str(v.dtype).replace("torch.", "")
        quant = f", {v.quant}" if v.quant else ""
        return (f"<b>Model</b>: {html.escape(str(v.name))} &nbsp; <b>Device</b>: {html.escape(str(v.device))} "
                f"({html.escape(dtype)}, attention {html.escape(str(v.attn))}{html.escape(quant)})")

    # --- messages to the user ------------------------------------------------------------------------
    def _say(self, text: str = "", error: bool = False) -> None:
        self.error = text if error else ""
        colour = "#b00020" if error else "#555"
        self.message.value = f'<span style="color:{colour}">{html.escape(text)}</span>' if text else ""

    # --- images --------------------------------------------------------------------------------------
    def set_image(self, source: Any, caption: str = "Your image", scene=None) -> bool:
        """Load `source` (anything `load_image` takes) as the image for the next question.

        Bad input shows a message in the app and returns False; the previous image stays.
        """
        from .images import load_image

        try:
            image = load_image(source)
        except VLMCourseError as e:
            self._say(for_the_app(str(e)), error=True)
            return False
        except Exception as e:  # an app keeps working: report, never raise into the kernel's loop
            self._say(for_the_app(f"Could not load that image: {type(e).__name__}: {e}"), error=True)
            return False
        self.image, self.scene, self._image_sent = image, scene, False
        self.preview.value = _png(image, PREVIEW_SIZE)
        self.preview.layout.display, self.empty_preview.layout.display = None, "none"
        self._caption = f"{html.escape(caption)} &middot; {image.width}&times;{image.height} px."
        self._show_caption()
        self._say("")
        return True

    def _show_caption(self) -> None:
        pending = self.image is not None and self.history and not self._image_sent
        self.caption.value = self._caption + (" It goes with your next question." if pending else "")

    def draw_scene(self, seed: int | None = None):
        """Draw a random scene from the shapes world (seed: the Seed box) and use it as the image."""
        from .shapes import random_scene

        seed = self.seed.value if seed is None else seed
        scene = random_scene(seed)
        if self.set_image(scene.draw(), f"Random scene, seed {seed}", scene=scene):
            self.seed.value = seed + 1  # the next click draws a new scene
        return scene

    def load_url(self, url: str | None = None) -> bool:
        """Load the image at `url` (default: the URL box)."""
        url = (self.url.value if url is None else url).strip()
        if not url:
            self._say("The URL box is empty: paste a public http(s) image URL, upload an image file, or draw a random "
                      "scene.", error=True)
            return False
        if not url.lower().startswith(("http://", "https://", "data:image/")):
            self._say(f"{url[:80]!r} is not a web address. For a file on your computer, use Upload; "
                      "else paste a public http(s) image URL, or draw a random scene.", error=True)
            return False
        return self.set_image(url, f"From {url[:60]}")

    def _on_upload(self, change) -> None:
        files = change["new"]
        if not files:
            return
        f = files[0]
        self.set_image(bytes(f["content"]), f"Uploaded {f['name']}")

    # --- asking ---------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _on_question_message(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("event") == "submit":
            self.ask()

    def _on_suggestion(self, button) -> None:
        self.question.value = button.description

    def ask(self, question: str | None = None) -> bool:
        """Ask `question` (default: the question box). Returns at once; the answer streams in a thread.

        Returns False (with a message in the app) when there is nothing to ask or it is busy.
        """
        from .chat import stream

        if self.busy:
            self._say("Still answering: wait, or press Stop.", error=True)
            return False
        question = (self.question.value if question is None else question).strip()
        if not question:
            self._say("Type a question first (or click one of the suggested questions).", error=True)
            return False
        if self.image is None and not self.history:
            self._say("Choose an image first: upload one, load a URL, or draw a random scene.", error=True)
            return False
        with_image = self.image is not None and not self._image_sent
        # Built by hand, not with messages.user(): a question like "cat.png" must stay text.
        parts = [{"type": "image", "image": self.image}] if with_image else []
        turn = {"role": "user", "content": parts + [{"type": "text", "text": question}]}
        try:
            s = stream(self.vlm, self.history + [turn], **self.settings())
        except VLMCourseError as e:
            self._say(str(e), error=True)
            return False
        except Exception as e:
            self._say(f"Could not start generation: {type(e).__name__}: {e}", error=True)
            return False
        with self._lock:
            self.history.append(turn)
            self._image_sent = self._image_sent or with_image
            self._stream, self.answer = s, ""
        self._stopped.clear()
        self.question.value = ""
        self._say("")
        self._set_busy(True, "Generating...")
        self._show_caption()
        self._render()
        self._worker = threading.Thread(target=self._consume, args=(s, with_image), daemon=True,
                                        name="vlm-course-app")
        self._worker.start()
        return True

    def settings(self) -> dict:
        """The generation options from the Settings panel, as `chat.stream` takes them."""
        return {"max_new_tokens": int(self.max_new_tokens.value), "temperature": float(self.temperature.value),
                "top_p": float(self.top_p.value)}

    def _consume(self, s, with_image: bool) -> None:
        """The background thread: read the stream, redraw the answer now and then, record the turn."""
        last = 0.0
        try:
            for piece in s:
                self.answer += piece
                now = time.perf_counter()
                if now - last >= 1 / UPDATES_PER_SECOND:
                    last = now
                    self._render()
        except Exception as e:  # GenerationError and anything else: a message, not a dead thread
            self._finish_turn(None, with_image, f"Generation failed: {e}")
            return
        text = s.text.strip() if not self._stopped.is_set() else self.answer.strip()
        self.answer = text
        if self._stopped.is_set():
            n = s.tokens_generated
            self._finish_turn(text, with_image, None, f"Stopped after {n} token{'' if n == 1 else 's'}.")
        else:
            u = s.usage
            self._finish_turn(text, with_image, None,
                              f"Done: {u.completion_tokens} tokens in {u.seconds:.2f} s "
                              f"({u.tokens_per_second:.1f} tokens/s, first token after "
                              f"{(u.time_to_first_token or 0) * 1000:.0f} ms).")

    def _finish_turn(self, text: str | None, with_image: bool, error: str | None, status: str = "") -> None:
        from .messages import assistant

        with self._lock:
            if text:
                self.history.append(assistant(text))
            else:  # nothing to keep: take the question back so the conversation stays valid
                if self.history and self.history[-1]["role"] == "user":
                    self.history.pop()
                if with_image:
                    self._image_sent = False
                if not error:
                    status = status + " No answer kept."
            self._stream = None
        self._show_caption()
        if error:
            self._say(error, error=True)
            status = "Error."
        self._render()
        self._set_busy(False, status)

    def _set_busy(self, busy: bool, status: str) -> None:
        self.ask_button.disabled = busy
        self.stop_button.disabled = not busy
        self.status.value = status

    def stop(self) -> None:
        """Cancel the answer being generated (the part already written is kept)."""
        s = self._stream
        if s is None:
            return
        self._stopped.set()
        self.status.value = "Stopping..."
        s.close()  # generation ends at its next token; the thread then records the turn

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until the current answer is finished (for scripts and tests). True if it finished."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return not self.busy

    def clear(self) -> None:
        """Forget the conversation (stopping any answer in progress); the image stays for the next question."""
        if self.busy:
            self.stop()
            self.wait(30)
        with self._lock:
            self.history, self.answer, self._image_sent = [], "", False
        self._show_caption()
        self._say("")
        self.status.value = "Cleared: a new conversation."
        self._render()

    # --- the transcript ---------------------------------------------------------------------------------
    def _render(self) -> None:
        """Redraw the conversation as HTML (user turns with their image thumbnails, answers as text)."""
        from .images import image_to_data_uri

        with self._lock:
            history = list(self.history)
            streaming = self._stream is not None
            answer = self.answer
        rows = []
        for m in history:
            if m["role"] == "user":
                parts = []
                for p in m["content"]:
                    if p["type"] == "image":
                        thumb = p["image"].copy()
                        thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                        parts.append(f'<img src="{image_to_data_uri(thumb)}" style="vertical-align:middle;'
                                     f'margin-right:6px;border:1px solid #ccc">')
                    else:
                        parts.append(html.escape(p["text"]))
                rows.append(f'<div class="vlm-turn vlm-user" style="margin:4px 0"><b>You:</b> {"".join(parts)}</div>')
            else:
                rows.append(self._answer_row(m["content"][0]["text"]))
        if streaming:
            rows.append(self._answer_row(answer, streaming=True))
        if not rows:
            rows.append('<div style="color:#888"><i>Your conversation appears here.</i></div>')
        self.transcript.value = "".join(rows)

    @staticmethod
    def _answer_row(text: str, streaming: bool = False) -> str:
        cls = "vlm-turn vlm-assistant" + (" vlm-streaming" if streaming else "")
        cursor = " &#9612;" if streaming else ""
        return (f'<div class="{cls}" style="margin:4px 0;color:#0b5394"><b>Model:</b> '
                f'<span class="vlm-answer-text">{html.escape(text)}</span>{cursor}</div>')


def image_qa_app(vlm=None, *, model_id: str | None = None, device: str | None = None, **settings) -> ImageQAApp:
    """Build the image Q&A app (loading a model with `load_vlm(model_id, device=device)` unless given one).

    settings: max_new_tokens, temperature, top_p (the Settings panel's starting values), seed (the
    first random scene's seed). Display the returned app by making it a cell's last expression.
    """
    _widgets()  # fail early, with the extra to install, before loading a model
    if vlm is None:
        from .models import load_vlm

        vlm = load_vlm(model_id, device=device)
    return ImageQAApp(vlm, **settings)
