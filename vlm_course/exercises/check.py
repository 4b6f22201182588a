"""What every exercise checker shares: its verdicts, and a watch on the model that sees what it was asked.

A checker has three outcomes:
- the committed placeholder (None, or a function that returns None): `not_solved` prints what to do and
  returns None (no verdict yet, and nothing for Jupyter to echo under the line), so the committed notebook
  runs top to bottom;
- a right answer: `correct` prints why and returns True;
- a wrong answer: `ExerciseError`, whose message says what is wrong and hints at the way, never the answer.
  A cell that fails stops "Run all" and fails nbmake, so a broken reference solution cannot pass unseen.

`ModelWatch` records every `model.generate` the learner's code makes (its prompt ids, its pixel values,
the ids it returned) and counts the model's forward passes, so a checker can tell that the model really
ran, on which image and which question, and that the text returned is the text the model wrote.
"""

from __future__ import annotations

import gc
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import VLMCourseError

# Mean absolute difference of normalised pixel values under which two drawings are the same scene. Measured
# on the tiny model and the idefics2-8b-shaped one: the same scene drawn at 64-256 px or through JPEG differs
# by 0.002-0.017, another scene (or the same one tinted) by 0.16-0.19.
SAME_IMAGE = 0.05


class ExerciseError(VLMCourseError, AssertionError):
    """An exercise's answer is wrong. The message says what is wrong and what to look at, not the answer."""


def not_solved(what_to_do: str) -> None:
    """The placeholder is still there: say what to do, and let the notebook go on."""
    print(f"Not solved yet: {what_to_do}")


def correct(why: str) -> bool:
    print(f"Correct: {why}")
    return True


def wrong(what: str) -> ExerciseError:
    """The error to raise for a wrong answer: `raise wrong("...")`."""
    return ExerciseError(f"Not yet: {what}")


def learner_call(what: str, fn, *args, **kwargs):
    """Call the learner's function; an exception in it becomes an ExerciseError that names it (the cause kept)."""
    try:
        return fn(*args, **kwargs)
    except ExerciseError:
        raise
    except Exception as e:  # the learner's code failed: say where, keep the traceback as the cause
        raise wrong(f"{what} raised {type(e).__name__}: {e}") from e


@dataclass
class GenerateCall:
    """One model.generate seen by a ModelWatch. Tensors are detached CPU copies."""

    input_ids: Any
    pixel_values: Any | None
    output: Any | None = None  # prompt + new ids, once generate has returned
    streamed: list[int] = field(default_factory=list)  # new ids handed to a streamer (a stream ended early has no output)
    thread: int = 0
    done: bool = False
    error: BaseException | None = None


@dataclass
class ModelWatch:
    """`with ModelWatch(vlm) as watch:` records the generate calls and forward passes of `vlm.model`.

    It wraps the model's own `generate` (an attribute on the instance, removed on exit), so it sees calls
    from chat.generate, chat.stream, a pipeline, the server's worker, or model.generate itself, in any thread.
    """

    vlm: Any
    calls: list[GenerateCall] = field(default_factory=list)
    forward_passes: int = 0

    def __enter__(self) -> "ModelWatch":
        model = self.vlm.model
        if "generate" in vars(model):
            raise VLMCourseError("This model is already being watched (a checker runs inside another one?).")
        original = model.generate

        def watched_generate(*args, **kwargs):
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            pixels = kwargs.get("pixel_values")
            call = GenerateCall(_cpu(input_ids), _cpu(pixels), thread=threading.get_ident())
            self.calls.append(call)
            if kwargs.get("streamer") is not None:
                kwargs["streamer"] = _RecordingStreamer(kwargs["streamer"], call)
            try:
                out = original(*args, **kwargs)
            except BaseException as e:  # GreenletExit included: a stream closed early ends here
                call.error, call.done = e, True
                raise
            call.output = _cpu(getattr(out, "sequences", out))
            call.done = True  # after the output: another thread waits on `done`, then reads it
            return out

        def count(module, args, output):
            self.forward_passes += 1

        model.generate = watched_generate
        self._hook = model.register_forward_hook(count)
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()
        del self.vlm.model.generate

    def settle(self, timeout: float = 120.0) -> list[GenerateCall]:
        """Wait for generate calls still running in other threads; return those that cannot finish: paused
        in this thread (a stream left open), or still running after `timeout` seconds."""
        gc.collect()  # a stream dropped without close() ends its generate when it is collected
        deadline = time.monotonic() + timeout
        me = threading.get_ident()
        while any(not c.done and c.thread != me for c in self.calls) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [c for c in self.calls if not c.done]


class _RecordingStreamer:
    """Passes generate's tokens on to the learner's streamer, and keeps the new ones for the checker."""

    def __init__(self, inner, call: GenerateCall):
        self.inner, self.call, self.prompt_seen = inner, call, False

    def put(self, value):
        if self.prompt_seen and self.call.input_ids is not None and self.call.input_ids.shape[0] == 1:
            self.call.streamed.extend(int(t) for t in value.reshape(-1).tolist())
        self.prompt_seen = True
        return self.inner.put(value)

    def end(self):
        return self.inner.end()


def _cpu(t):
    return t.detach().to("cpu").clone() if hasattr(t, "detach") else None


def expected_inputs(vlm, messages) -> dict:
    """The model inputs the package's own path makes of `messages` (what a right answer sends)."""
    from ..chat import prepare

    return {k: _cpu(v) for k, v in prepare(vlm, [messages]).items()}


def prompt_text(vlm, ids) -> str:
    """A prompt's ids as readable text, each run of image tokens folded to one mark."""
    text = vlm.tokenizer.decode(list(ids), skip_special_tokens=False).replace("<fake_token_around_image>", "")
    text = re.sub(r"(?:<image>)+", "<image>", text)
    return re.sub(r"(?:<pad>|<unk>)+", "", text)


def same_image(vlm, pixels_a, pixels_b) -> bool:
    """Whether two pixel_values tensors (one image's blocks) show the same drawing."""
    if pixels_a is None or pixels_b is None or tuple(pixels_a.shape) != tuple(pixels_b.shape):
        return False
    return float((pixels_a.float() - pixels_b.float()).abs().mean()) < SAME_IMAGE


def matching_call(vlm, watch: ModelWatch, messages) -> GenerateCall | None:
    """The first recorded single-conversation call whose prompt is exactly what `messages` make and whose
    image(s) show the same drawing(s); None if no call matches."""
    want = expected_inputs(vlm, messages)
    ids = want["input_ids"][0].tolist()
    for call in watch.calls:
        if call.input_ids is None or call.input_ids.shape[0] != 1 or call.input_ids[0].tolist() != ids:
            continue
        if "pixel_values" in want and not same_image(vlm, call.pixel_values, want["pixel_values"]):
            continue
        return call
    return None


def explain_mismatch(vlm, watch: ModelWatch, messages, what: str) -> str:
    """Why no call matched `messages`: no call at all, another prompt (shown), or another image."""
    if not watch.calls:
        return (f"{what} never ran the model (0 generate calls, {watch.forward_passes} forward passes): ask it "
                "with vlm_course.chat (generate or stream) and use its reply.")
    want = expected_inputs(vlm, messages)
    for call in watch.calls:
        if call.input_ids is not None and call.input_ids.shape[0] == 1 and \
                call.input_ids[0].tolist() == want["input_ids"][0].tolist():
            return (f"{what} asked the right question, but the image the model saw is not the one it was given "
                    "(another scene, or an image drawn differently).")
    seen = prompt_text(vlm, watch.calls[-1].input_ids[0].tolist())
    return f"{what} ran the model, but on another prompt than the exercise's. The model read: {seen!r}"


def reply_text(vlm, call: GenerateCall, row: int = 0) -> str | None:
    """The text of a call's reply, as chat.generate makes it: from its output, or for a stream ended early
    (ended at its end token, or closed) the tokens its streamer got; None if there is neither."""
    from ..chat import finish_reply

    if call.output is not None:
        new = call.output[row, call.input_ids.shape[1]:].tolist()
    elif call.streamed and row == 0:
        new = call.streamed
    else:
        return None
    return finish_reply(vlm, new, len(new), None)[1]
