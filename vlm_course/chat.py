"""Talk to a vision-language model: one conversation, many at once, or streamed piece by piece.

    reply = generate(vlm, [user(image, "What do we see in this image?")])
    reply.text, reply.usage

    replies = generate_batch(vlm, [conversation_1, conversation_2])   # left padding, one Reply each
    for piece in stream(vlm, conversation): print(piece, end="")

Greedy decoding unless temperature > 0. The prompt is removed from the output by token count,
never by splitting strings. Images travel inside the messages (see vlm_course.messages).
For lesson 01: render_prompt (the template's string), prepare (the tensors), count_tokens and
token_runs (what the model reads), splitting_processor (image splitting on).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import greenlet
import torch
from transformers.generation.streamers import BaseStreamer

from .errors import GenerationError, MessagesError, VLMCourseError
from .images import load_image
from .messages import assistant, image_sources, user, validate  # noqa: F401  (re-exported for learners)

MAX_NEW_TOKENS_LIMIT = 4096
# Below this a temperature is greedy in effect, and dividing the logits by it overflows them to inf.
GREEDY_BELOW = 1e-4
IMAGE_TOKEN = "<image>"


@dataclass
class Usage:
    """What a reply cost. Times in seconds; rates in tokens per second."""

    prompt_tokens: int
    completion_tokens: int
    seconds: float
    time_to_first_token: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def prefill_tokens_per_second(self) -> float | None:
        t = self.time_to_first_token
        return self.prompt_tokens / t if t else None

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Tokens after the first, over the time after the first: the speed of decoding alone."""
        t = self.time_to_first_token
        if t is None or self.completion_tokens < 2 or self.seconds <= t:
            return None
        return (self.completion_tokens - 1) / (self.seconds - t)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        for name in ("total_tokens", "prefill_tokens_per_second", "decode_tokens_per_second", "tokens_per_second"):
            d[name] = getattr(self, name)
        return d


@dataclass
class Reply:
    text: str
    usage: Usage
    finish_reason: str = "stop"  # "stop" (end of turn or a stop string) or "length" (max_new_tokens reached)
    token_ids: list[int] = field(default_factory=list, repr=False)


def render_prompt(vlm, messages, add_generation_prompt: bool = True) -> str:
    """The prompt string the chat template makes of a conversation (before image tokens are expanded)."""
    messages = validate(messages, for_generation=add_generation_prompt)
    return vlm.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)


def prepare(vlm, conversations: Sequence[list[dict]], padding_side: str = "left", processor=None):
    """Validate conversations, load their images, and turn them into model inputs on the model's device.

    `processor` replaces vlm.processor (e.g. one with image splitting switched on)."""
    processor = processor or vlm.processor
    if getattr(vlm.model.config, "model_type", None) == "blip-2":  # no chat template: one image and a prompt
        from .caption import blip2_model_inputs

        return blip2_model_inputs(vlm.model, processor, conversations, padding_side)
    conversations = [validate(c) for c in conversations]
    texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    images = [[load_image(src) for src in image_sources(c)] for c in conversations]
    for i, (text, imgs) in enumerate(zip(texts, images)):
        _check_placeholders(text, len(imgs), where=f"conversation {i}" if len(texts) > 1 else "the conversation")
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True, "padding_side": padding_side}
    if any(images):
        kwargs["images"] = images
    _check_image_sizes(processor, [img for imgs in images for img in imgs])
    try:
        inputs = processor(**kwargs)
    except (ValueError, ArithmeticError, IndexError) as e:  # e.g. an image the processor cannot handle
        sizes = ", ".join(f"{img.width}x{img.height}" for imgs in images for img in imgs) or "none"
        raise GenerationError(f"The processor refused these inputs (image sizes: {sizes}): "
                              f"{type(e).__name__}: {e}") from None
    inputs = inputs.to(vlm.device)
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(vlm.model.dtype)
    return inputs


def _check_image_sizes(processor, images) -> None:
    """Image splitting cuts each image into 2x2 crops: a side of 1 pixel leaves an empty crop, which the
    processor divides by (ZeroDivisionError deep inside transformers). Say so before it gets there."""
    smallest = 2 if getattr(processor.image_processor, "do_image_splitting", False) else 1
    for img in images:
        if min(img.size) < smallest:
            raise GenerationError(f"An image of {img.width}x{img.height} pixels is too small for this processor: with "
                                  f"image splitting on, each side needs at least {smallest} pixels. Use a larger image "
                                  "(or resize it).")


def count_tokens(vlm, messages: list[dict], processor=None) -> dict:
    """What the model reads for a conversation: its input_ids split into text, image and fake tokens.

    One <image> placeholder becomes <fake_token_around_image> + image_seq_len <image> tokens +
    <fake_token_around_image> (adjacent images share a fake token); with image splitting, 5 such blocks.
    """
    processor = processor or vlm.processor
    inputs = prepare(vlm, [messages], processor=processor)
    ids = inputs["input_ids"][0].tolist()
    tok = vlm.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    fake_id = tok.convert_tokens_to_ids("<fake_token_around_image>")
    n_images = len(image_sources(validate(messages)))
    image_tokens, fake_tokens = ids.count(image_id), ids.count(fake_id)
    return {"images": n_images, "image_seq_len": processor.image_seq_len,
            "image_splitting": bool(processor.image_processor.do_image_splitting),
            "prompt_tokens": len(ids), "image_tokens": image_tokens, "fake_tokens": fake_tokens,
            "text_tokens": len(ids) - image_tokens - fake_tokens,
            "image_tokens_per_image": image_tokens / n_images if n_images else 0,
            "pixel_values_shape": tuple(inputs["pixel_values"].shape) if "pixel_values" in inputs else None}


def token_runs(vlm, ids) -> list[tuple[str, int]]:
    """The tokens of `ids` with repeats folded: [("<image>", 64), ...], to print a prompt readably."""
    runs: list[tuple[str, int]] = []
    for token in vlm.tokenizer.convert_ids_to_tokens(list(ids)):
        if runs and runs[-1][0] == token:
            runs[-1] = (token, runs[-1][1] + 1)
        else:
            runs.append((token, 1))
    return runs


def splitting_processor(vlm, on: bool = True):
    """A copy of the model's processor with image splitting on (each image becomes 4 crops + the original)
    or, with on=False, off (one block an image), whatever the model's own processor does."""
    import copy

    processor = copy.deepcopy(vlm.processor)
    processor.image_processor.do_image_splitting = on
    return processor


def _check_placeholders(prompt: str, n_images: int, where: str) -> None:
    """The processor pairs the k-th <image> in the prompt with the k-th image: their numbers must agree."""
    n_placeholders = prompt.count(IMAGE_TOKEN)
    if n_placeholders != n_images:
        raise MessagesError(
            f"{where.capitalize()} renders {n_placeholders} {IMAGE_TOKEN} placeholder(s) for {n_images} image(s). "
            "Each image part becomes exactly one placeholder: put every image in the messages as "
            "{'type': 'image', 'image': ...} and do not type <image> yourself.")


def generation_options(vlm, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                       seed: int | None = None, stop: Sequence[str] | str | None = None) -> dict:
    """Check options and turn them into keyword arguments for model.generate."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise GenerationError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens!r}.")
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 10:
        raise GenerationError(f"temperature must be a number from 0 (greedy) to 10, got {temperature!r}.")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise GenerationError(f"top_p must be a number in (0, 1], got {top_p!r}.")
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": vlm.tokenizer.pad_token_id}
    if temperature >= GREEDY_BELOW:
        kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p))
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise GenerationError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}.")
        torch.manual_seed(seed)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stops):
        raise GenerationError(f"stop must be a non-empty string or a list of them, got {stop!r}.")
    if stops:
        kwargs.update(stop_strings=stops, tokenizer=vlm.tokenizer)
    return kwargs


def end_token_ids(vlm) -> set[int]:
    eos = vlm.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    end = vlm.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    if isinstance(end, int) and end != vlm.tokenizer.unk_token_id:
        ids.add(end)
    return ids


def cut_at_stop(text: str, stops) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops or [] if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def finish_reply(vlm, new_ids: list[int], max_new_tokens: int, stops) -> tuple[list[int], str, str]:
    """Generated ids up to and including the first end token, their text, and the finish reason."""
    ends = end_token_ids(vlm)
    for i, t in enumerate(new_ids):
        if t in ends:
            new_ids, reason = new_ids[: i + 1], "stop"
            break
    else:
        reason = "length" if len(new_ids) >= max_new_tokens else "stop"
    text = vlm.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
    text, stopped = cut_at_stop(text, stops)
    return new_ids, text.strip(), "stop" if stopped else reason


class _FirstTokenClock(BaseStreamer):
    """Records when generate produces its first new token (the first put() is the prompt)."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self):
        pass


def generate(vlm, messages: list[dict], **options) -> Reply:
    """One conversation in, one Reply (text, usage, finish_reason) out."""
    return _generate(vlm, [messages], options, clock_first_token=True)[0]


def generate_batch(vlm, conversations: Sequence[list[dict]], **options) -> list[Reply]:
    """Many conversations in one batched generate (left padding): one Reply each, in order.

    Greedy replies equal those of one-at-a-time `generate`. Each usage's seconds is the whole batch's time.
    """
    if isinstance(conversations, (list, tuple)) and conversations and isinstance(conversations[0], dict):
        raise GenerationError("generate_batch takes a list of conversations (each a list of messages); "
                              "for a single conversation use generate().")
    if not conversations:
        return []
    return _generate(vlm, list(conversations), options, clock_first_token=False)


def _generate(vlm, conversations, options, clock_first_token: bool) -> list[Reply]:
    kwargs = generation_options(vlm, **options)
    stops = kwargs.get("stop_strings")
    inputs = prepare(vlm, conversations)
    clock = _FirstTokenClock() if clock_first_token else None
    start = time.perf_counter()
    try:
        with torch.no_grad():  # not inference_mode: quanto int4 kernels fail under it
            output = vlm.model.generate(**inputs, **kwargs, streamer=clock)
    except VLMCourseError:
        raise
    except (RuntimeError, ValueError) as e:
        raise GenerationError(f"Generation failed: {type(e).__name__}: {e}") from e
    seconds = time.perf_counter() - start
    prompt_len = inputs["input_ids"].shape[1]
    replies = []
    for row in range(output.shape[0]):
        new_ids, text, reason = finish_reply(vlm, output[row, prompt_len:].tolist(), kwargs["max_new_tokens"], stops)
        ttft = clock.first - start if clock and clock.first else None
        usage = Usage(int(inputs["attention_mask"][row].sum()), len(new_ids), seconds, ttft)
        replies.append(Reply(text, usage, reason, new_ids))
    return replies


class _Handover(BaseStreamer):
    """generate's streamer: pauses generate at each new token and hands the token to the reading loop.

    generate runs in a greenlet whose parent is the loop that asked for the token (see Stream); switching
    to it pauses generate right here, inside `put`, until the loop asks for the next one.
    """

    def __init__(self):
        self.prompt_seen, self.tokens = False, 0

    def put(self, value):
        if not self.prompt_seen:  # generate first puts the whole prompt
            self.prompt_seen = True
            return
        self.tokens += 1
        grad = torch.is_grad_enabled()  # torch keeps this per thread: generate and the loop share a thread
        greenlet.getcurrent().parent.switch(int(value.reshape(-1)[0]))
        torch.set_grad_enabled(grad)

    def end(self):
        pass


class IncrementalDecoder:
    """Turns token ids into text one at a time in O(1) per token (decoding the whole reply each time is O(n^2)).

    It decodes a short window of recent ids and returns only the new characters; a window ending in
    half a multi-byte character (U+FFFD) waits for the next token.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        before = decode(self.ids[self.prefix:self.read])
        after = decode(self.ids[self.prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]


def visible_text(raw: str, stops) -> tuple[str, bool]:
    """What of a reply still being generated is safe to show, and whether a stop string ended it.

    The shown text must stay a prefix of the final one (stripped, cut before the first stop string): so
    it is cut at a stop string, and trailing whitespace and any start of a stop string are held back.
    """
    visible, stopped = cut_at_stop(raw.lstrip(), stops)
    if stopped:
        return visible.rstrip(), True
    return visible[: len(visible) - _held_back(visible, stops)].rstrip(), False


def _held_back(text: str, stops) -> int:
    """How many trailing characters to hold back: whitespace (the reply is stripped at the end) and any
    start of a stop string (it may yet complete, and then the text is cut before it)."""
    keep = len(text.rstrip())
    hold = len(text) - keep
    for s in stops or []:
        for k in range(min(len(s) - 1, keep), 0, -1):
            if text[:keep].endswith(s[:k]):
                hold = max(hold, len(text) - keep + k)
                break
    return hold


_END = object()  # what the generation greenlet returns when generate has returned


class Stream:
    """An iterator of text pieces as the model produces them; see `stream`.

    After the loop: `.text` (all pieces joined, equal to generate's text), `.usage`, `.finish_reason`,
    `.token_ids`. `.close()` (or leaving a `with` block) stops generation; `.tokens_generated` says how
    many tokens the model produced.

    generate runs in a greenlet in the reading thread: each `next()` resumes it until its streamer has the
    next token, then generate pauses there and the token comes back. No second thread, no queue, no GIL
    hand-over; and between pieces nothing runs. So a stream is read by one thread (the first to read it).
    """

    def __init__(self, vlm, messages: list[dict], options: dict):
        self.vlm = vlm
        self.kwargs = generation_options(vlm, **options)
        self.inputs = prepare(vlm, [messages])  # bad messages or images fail here, at the call
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.text = ""  # what has been handed out so far
        self.token_ids: list[int] = []
        self._stops = self.kwargs.get("stop_strings")
        self._ends = end_token_ids(vlm)
        self._decoder = IncrementalDecoder(vlm.tokenizer)
        self._raw = ""  # everything decoded so far, before stripping and stop strings
        self._streamer = _Handover()
        self._generation: greenlet.greenlet | None = None  # made by the first read, in the reading thread
        self._thread: int | None = None  # that thread's id
        self._cancel = threading.Event()
        self._done = False
        self._ended = False  # saw an end token
        self._start = time.perf_counter()  # reset by the first read, when generation starts
        self._first: float | None = None
        self.token_times: list[float] = []  # seconds from the start of generation to each token

    @property
    def tokens_generated(self) -> int:
        """How many tokens the model has produced so far."""
        return self._streamer.tokens

    @property
    def running(self) -> bool:
        """Whether generation has started and not ended (it is paused while nobody reads)."""
        return self._generation is not None and not self._generation.dead

    def _generate(self):
        with torch.no_grad():
            self.vlm.model.generate(**self.inputs, **self.kwargs, streamer=self._streamer)
        return _END

    def _resume(self, how):
        """Run `how` (a switch into generate, or a throw to end it) with the reader's grad mode kept."""
        grad = torch.is_grad_enabled()
        try:
            return how()
        finally:
            torch.set_grad_enabled(grad)

    def _next_token(self):
        """generate's next token id, or _END once it has returned; raises whatever generate raised."""
        if self._generation is None:
            self._start = time.perf_counter()
            self._thread = threading.get_ident()
            self._generation = greenlet.greenlet(self._generate)
        elif self._generation.dead:  # left by an exception the loop did not catch (KeyboardInterrupt)
            return _END
        self._generation.parent = greenlet.getcurrent()  # tokens, the end and errors come back to this reader
        return self._resume(self._generation.switch)

    def _in_another_thread(self) -> bool:
        """Whether generate lives in a greenlet of another thread (a greenlet cannot be switched to from there)."""
        return self._generation is not None and threading.get_ident() != self._thread

    def _stop_generation(self) -> None:
        """End a paused generate now: GreenletExit unwinds it from its streamer, and nothing runs after."""
        if self._generation is not None and not self._generation.dead:
            self._resume(self._generation.throw)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._in_another_thread():  # refused, and the stream goes on for its own thread
            raise GenerationError("A stream is read by one thread: the one that first read it. Read it to the "
                                  "end there; close() works from any thread.")
        while not self._done:
            if self._cancel.is_set():  # close() from another thread, or a stop string completed
                self._stop_generation()
                return self._finish("")
            try:
                token = self._next_token()
            except VLMCourseError:
                self._done = True
                raise
            except Exception as e:  # generate raised: it reaches the loop at once, as a GenerationError
                self._done = True
                raise GenerationError(f"Generation failed: {type(e).__name__}: {e}") from e
            if token is _END:
                return self._finish("")
            now = time.perf_counter()
            if self._first is None:
                self._first = now
            self.token_times.append(now - self._start)
            piece = self._add(token)
            if self._ended:  # the reply is complete: generate need not finish its step
                self._stop_generation()
                return self._finish(piece)
            if piece:
                return piece
        raise StopIteration

    def _finish(self, piece: str) -> str:
        """The last piece (this one and whatever the end makes visible), or StopIteration if there is none."""
        self._done = True
        piece += self._flush()
        if piece:
            return piece
        raise StopIteration

    def _add(self, token_id: int) -> str:
        """Take one token; return the new text it makes safe to show ("" while held back)."""
        self.token_ids.append(token_id)
        if token_id in self._ends:
            self._ended = True
            return ""
        self._raw += self._decoder.add(token_id)
        visible, stopped = visible_text(self._raw, self._stops)
        if stopped:
            self._cancel.set()
        if len(visible) <= len(self.text):
            return ""
        piece = visible[len(self.text):]
        self.text = visible
        return piece

    def _flush(self) -> str:
        """The end: the final text exactly as generate would make it, and whatever of it was held back."""
        new_ids, text, reason = finish_reply(self.vlm, self.token_ids, self.kwargs["max_new_tokens"], self._stops)
        self.finish_reason, self.token_ids = reason, new_ids
        if not text.startswith(self.text):  # cannot happen unless decoding is not prefix-stable
            raise GenerationError(f"Internal error: streamed text {self.text!r} is not a prefix of the reply {text!r}.")
        piece, self.text = text[len(self.text):], text
        seconds = time.perf_counter() - self._start
        ttft = self._first - self._start if self._first else None
        self.usage = Usage(int(self.inputs["attention_mask"][0].sum()), len(new_ids), seconds, ttft)
        return piece

    def close(self) -> None:
        """Stop generation. From the reading thread (or before any read) it ends at once. From another thread
        (a Stop button while a thread reads) it cannot touch generate, which runs in the reading thread: the
        reading loop gets the token being computed, then ends."""
        self._cancel.set()
        if self._in_another_thread():  # the reading loop sees _cancel before it resumes generate
            return
        self._stop_generation()
        self._done = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stream(vlm, messages: list[dict], **options) -> Stream:
    """Generate a reply as text pieces while the model produces them (no sleeps, no polling).

        s = stream(vlm, conversation)
        for piece in s: print(piece, end="")
        s.usage.time_to_first_token

    Special tokens never appear; the pieces join to exactly `generate(...).text`. An error in
    generation is raised by the loop as GenerationError; `s.close()` stops generation.
    """
    return Stream(vlm, messages, options)
