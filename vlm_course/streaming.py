"""Streaming the standard way: transformers' TextIteratorStreamer, with model.generate in a second thread.

    with thread_stream(vlm, messages, max_new_tokens=80) as s:
        for piece in s:
            print(piece, end="")

This is the pattern of transformers' documentation and of most demos, done right. The bare pattern
(`Thread(target=model.generate, kwargs=...)`, then `for text in streamer`) has three faults:
- an exception inside generate dies with its thread, and the loop waits on the queue forever;
- a timeout on the queue, the usual fix, also ends the stream quietly when a prefill is merely slow;
- stopping early (a `break`) leaves generate running to max_new_tokens in the background.
Here generate's thread ends the queue whatever happens and keeps the exception for the loop, which
raises it; a timeout raises GenerationTimeout instead of ending quietly; close() (or leaving the
`with` block, or dropping the stream) sets an Event that a StoppingCriteria reads at every step, and
waits for the thread.

vlm_course.chat.stream is the package's faster variant: generate in a greenlet of the reading thread,
no second thread at all (lesson 03 measures both).
"""

from __future__ import annotations

import queue
import threading

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .chat import generation_options, prepare
from .errors import GenerationError, GenerationTimeout, VLMCourseError

# The longest wait for the next piece, the prefill included. Errors no longer need a timeout to be
# seen (the thread ends the queue), so this only catches a generate that is stuck: generous.
DEFAULT_TIMEOUT = 60.0


class CancelGeneration(StoppingCriteria):
    """Stops generate at its next step once `event` is set (from any thread: generate checks it each step)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _generate_in_thread(model, inputs, kwargs, streamer: TextIteratorStreamer, failure: list) -> None:
    """The thread's body. It references no ThreadedStream, so a dropped stream is collected (and cancels)."""
    try:
        with torch.no_grad():  # torch keeps grad mode per thread: this thread needs its own
            model.generate(**inputs, **kwargs, streamer=streamer)
    except BaseException as e:  # kept for the reader, which raises it; nothing is lost with the thread
        failure.append(e)
        # generate did not reach its own end(): end the queue, or the reader waits forever. Not streamer.end(),
        # which decodes what is left, and the error may have come from decoding.
        streamer.on_finalized_text("", stream_end=True)


class ThreadedStream:
    """An iterator of text pieces from TextIteratorStreamer, generate running in a thread; see `thread_stream`.

    After the loop: `.text` (the pieces joined: generate's text). `.close()` stops generation and
    joins the thread; `.running` says whether the thread is alive.
    """

    def __init__(self, vlm, messages: list[dict], timeout: float | None, options: dict):
        if options.get("stop"):
            raise GenerationError("thread_stream does not cut the text at stop strings (TextIteratorStreamer shows "
                                  "everything generate produces); use vlm_course.chat.stream(..., stop=...).")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise GenerationError(f"timeout must be a positive number of seconds or None, got {timeout!r}.")
        kwargs = generation_options(vlm, **options)
        inputs = prepare(vlm, [messages])  # bad messages or images fail here, at the call, not in the thread
        self.timeout = timeout
        self.text = ""
        self.cancelled = threading.Event()
        self._failure: list[BaseException] = []
        self._done = False
        self._held = ""  # trailing whitespace not shown yet
        self.streamer = TextIteratorStreamer(vlm.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                             timeout=timeout)
        kwargs["stopping_criteria"] = StoppingCriteriaList([CancelGeneration(self.cancelled)])
        self.thread = threading.Thread(target=_generate_in_thread, name="vlm-course generate", daemon=True,
                                       args=(vlm.model, inputs, kwargs, self.streamer, self._failure))
        self.thread.start()

    @property
    def running(self) -> bool:
        """Whether generate's thread is still alive."""
        return self.thread.is_alive()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        while not self._done:
            try:
                piece = next(self.streamer)  # waits on the queue, at most `timeout` seconds
            except queue.Empty:
                self._done = True
                self.cancelled.set()  # generate stops after the step it is in, if it ever finishes it
                raise GenerationTimeout(
                    f"No text from generate for {self.timeout:g} s: it is stuck or slower than the timeout (a long "
                    "prefill on a big model can be). Generation was asked to stop; pass a larger timeout= "
                    "(or None to wait as long as it takes).") from None
            except StopIteration:
                self._finish()
                raise
            # generate's text is stripped: drop leading whitespace, hold trailing whitespace until more text follows
            piece = self._held + (piece if self.text else piece.lstrip())
            visible = piece.rstrip()
            self._held = piece[len(visible):]
            if visible:
                self.text += visible
                return visible
        raise StopIteration

    def _finish(self) -> None:
        """The queue has ended: generate returned or raised. Join its thread; raise what it raised."""
        self._done = True
        self.thread.join(DEFAULT_TIMEOUT)  # generate has ended the queue: it is returning now
        if self._failure:
            e = self._failure[0]
            if isinstance(e, (VLMCourseError, KeyboardInterrupt)):
                raise e
            raise GenerationError(f"Generation failed: {type(e).__name__}: {e}") from e

    def close(self, wait: float | None = DEFAULT_TIMEOUT) -> None:
        """Stop generation and join its thread, waiting at most `wait` seconds (generate stops after the
        forward pass it is in: one step, or the rest of the prefill)."""
        self._done = True
        self.cancelled.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(wait)
            if self.thread.is_alive():
                raise GenerationTimeout(f"generate's thread did not stop within {wait:g} s of close(): its current "
                                        "step is stuck. It stops as soon as that step ends.")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):  # a loop left with `break` and no close(): do not let generate run on to max_new_tokens
        cancelled = getattr(self, "cancelled", None)
        if cancelled is not None:
            cancelled.set()


def thread_stream(vlm, messages: list[dict], *, timeout: float | None = DEFAULT_TIMEOUT, **options) -> ThreadedStream:
    """Stream a reply with TextIteratorStreamer and generate in a thread (options as for chat.generate, no stop).

    An error inside generate is raised by the loop as GenerationError (the original as its cause); no text
    for `timeout` seconds raises GenerationTimeout; close() or leaving a `with` block stops generation and
    joins the thread. The pieces join to generate's text (stripped).
    """
    return ThreadedStream(vlm, messages, timeout, options)

