"""Group concurrent requests into one batched `model.generate`: the server's throughput trick.

One worker thread owns the model. Requests wait in a queue; the worker takes the first, then
gathers more for up to `max_wait_ms` (at most `max_batch_size` in all, only requests that can share
one generate: same sampling settings), and runs one left-padded generate for the group
(`chat.prepare` pads). Each row keeps its own `max_new_tokens`, stop strings, logit bias and cancel
flag: a per-row stopping criterion ends a row early, and the whole generate ends when every row is
done or cancelled. The same criterion sees every new token, so it also fans tokens out to each
request as text pieces (streaming and non-streaming requests share one code path).

Per row as well: OpenAI's frequency and presence penalties (`_RowPenalties`) and logprobs
(`_LogprobRecorder` keeps each step's log-softmax of the model's logits for the rows that ask).
Before generating, each row's prompt is measured against the model's context: a row that does not fit
fails with `context_length_exceeded`, before any model compute. While the prompt is prefilled the
decoder layers check whether every row has been cancelled (the client left, or the server is shutting
down) and stop the forward pass if so.

Greedy rows give the same text as `chat.generate` on the same conversation (left padding does not
change a row's tokens); the tests check this.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..chat import IncrementalDecoder, Usage, end_token_ids, finish_reply, generation_options, prepare, visible_text
from ..errors import GenerationError, VLMCourseError
from .errors import ShuttingDown


class ContextLengthError(GenerationError):
    code, param = "context_length_exceeded", "messages"


def context_length(vlm) -> Optional[int]:
    """The most positions the language model was built for (prompt and reply together)."""
    config = vlm.model.config
    text = getattr(config, "text_config", None) or config
    return getattr(text, "max_position_embeddings", None)


def check_context(prompt_tokens: int, max_new_tokens: int, context: Optional[int], explicit: bool) -> int:
    """The max_new_tokens a row may use; ContextLengthError when its prompt leaves no room (or not the
    room it asked for)."""
    if context is None:
        return max_new_tokens
    room = context - prompt_tokens
    if room < 1 or (explicit and max_new_tokens > room):
        asked = f" and max_tokens={max_new_tokens}" if explicit else ""
        raise ContextLengthError(
            f"This model's context is {context} tokens; the prompt has {prompt_tokens} tokens{asked}, "
            f"{prompt_tokens + (max_new_tokens if explicit else 1) - context} too many. Shorten the messages "
            "(or send fewer images), or ask for fewer max_tokens.")
    return min(max_new_tokens, room)


class _Cancelled(Exception):
    """Raised inside the model's forward pass when every row of the batch has been cancelled."""


@dataclass
class Result:
    text: str
    finish_reason: str  # "stop", "length" or "cancelled"
    usage: Usage
    logprobs: Optional[list[dict]] = None  # OpenAI's logprobs.content, when the request asked


@dataclass
class Job:
    """One request for the worker. `emit` receives ("delta", str), ("done", Result) or ("error", exc, status)."""

    conversation: list[dict]
    emit: Callable[[tuple], None]
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stops: Optional[list[str]] = None
    logit_bias: Optional[dict[int, float]] = None
    stream: bool = True  # False: no "delta" events, only "done" (saves the event loop 1 wake-up a token)
    top_k: Optional[int] = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    max_tokens_explicit: bool = True  # False: the server's default, shortened to fit the context
    cancel: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)

    def group_key(self) -> tuple:
        """Jobs with equal keys can share one generate. Greedy jobs always can; a seeded job runs alone
        so that its random numbers are its own (the same as chat.generate with that seed)."""
        if self.temperature == 0:
            return ("greedy",)
        top_k = self.top_k if self.top_k and self.top_k > 0 else None
        return ("sample", self.temperature, self.top_p, top_k, self.seed, id(self) if self.seed is not None else None)


class _Row:
    """The worker's view of one job inside a running generate."""

    def __init__(self, vlm, job: Job, prompt_tokens: int):
        self.vlm, self.job, self.prompt_tokens = vlm, job, prompt_tokens
        self.ids: list[int] = []
        self.decoder, self.raw = IncrementalDecoder(vlm.tokenizer), ""  # decoded one token at a time
        self.sent = ""  # text already handed to the client: always a prefix of the final text
        self.first: Optional[float] = None
        self.done = False
        self.cancelled = False
        self.logprobs: list[dict] = []  # OpenAI's logprobs.content entries, one a generated token
        self.logprobs_sent = 0

    def take(self, token_id: int, end_ids: set[int], logprobs=None) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.ids.append(token_id)
        if token_id in end_ids:
            self.finish()
            return
        if logprobs is not None:
            self.logprobs.append(self.logprob_entry(token_id, logprobs))
        if not self.job.stream and not self.job.stops:  # nothing to send or check until the end
            if len(self.ids) >= self.job.max_new_tokens:
                self.finish()
            return
        self.raw += self.decoder.add(token_id)
        # Held back: the start of a stop string (the client must never see it) and trailing whitespace.
        text, stopped = visible_text(self.raw, self.job.stops)
        if len(text) > len(self.sent):
            if self.job.stream:
                self.job.emit(("delta", text[len(self.sent):], self.new_logprobs()))
            self.sent = text
        if stopped or len(self.ids) >= self.job.max_new_tokens:
            self.finish()
        elif self.job.cancel.is_set():
            self.finish(cancelled=True)

    def finish(self, cancelled: bool = False) -> None:
        if self.done:
            return
        self.done = True
        self.cancelled = cancelled
        ids, text, reason = finish_reply(self.vlm, self.ids, self.job.max_new_tokens, self.job.stops)
        if cancelled:
            reason = "cancelled"
        if self.job.stream and text.startswith(self.sent) and len(text) > len(self.sent):
            self.job.emit(("delta", text[len(self.sent):], self.new_logprobs()))
        elif self.job.stream and self.logprobs_sent < len(self.logprobs):
            self.job.emit(("delta", "", self.new_logprobs()))
        now = time.perf_counter()
        # Times count from the moment the request was queued: what the client waited.
        ttft = self.first - self.job.enqueued if self.first is not None else None
        usage = Usage(self.prompt_tokens, len(ids), now - self.job.enqueued, ttft)
        self.job.emit(("done", Result(text, reason, usage, self.logprobs if self.job.logprobs else None)))

    def new_logprobs(self) -> Optional[list[dict]]:
        """The logprobs entries not yet sent (streamed with the delta they belong to)."""
        if not self.job.logprobs:
            return None
        new, self.logprobs_sent = self.logprobs[self.logprobs_sent:], len(self.logprobs)
        return new

    def logprob_entry(self, token_id: int, logprobs: torch.Tensor) -> dict:
        def one(tid: int, value: float) -> dict:
            text = self.vlm.tokenizer.decode([tid])
            return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8", "replace"))}

        entry = one(token_id, float(logprobs[token_id]))
        entry["top_logprobs"] = []
        if self.job.top_logprobs:
            values, ids = torch.topk(logprobs, min(self.job.top_logprobs, logprobs.shape[-1]))
            entry["top_logprobs"] = [one(int(t), float(v)) for v, t in zip(values.tolist(), ids.tolist())]
        return entry


class _FanOut(StoppingCriteria):
    """Called by generate after every step with all rows' tokens: hands each live row its token and
    reports which rows are finished (their own limit, a stop string, end of turn, or cancelled)."""

    def __init__(self, rows: list[_Row], end_ids: set[int], prompt_len: int, recorder: Optional["_LogprobRecorder"] = None):
        self.rows, self.end_ids, self.prompt_len, self.recorder = rows, end_ids, prompt_len, recorder

    def __call__(self, input_ids, scores, **kwargs):
        last = input_ids[:, -1].tolist()
        logprobs = self.recorder.last if self.recorder is not None else None
        for i, (row, token) in enumerate(zip(self.rows, last)):
            if not row.done:
                if row.job.cancel.is_set():
                    row.finish(cancelled=True)
                else:
                    row.take(token, self.end_ids, logprobs[i] if logprobs is not None and row.job.logprobs else None)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


class _LogprobRecorder(LogitsProcessor):
    """First in the list: keeps the log-softmax of the model's own logits at this step (before biases,
    penalties, temperature and top-p), for the rows that asked for logprobs."""

    def __init__(self):
        self.last = None

    def __call__(self, input_ids, scores):
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores


class _RowPenalties(LogitsProcessor):
    """OpenAI's frequency and presence penalties, per row, over the tokens generated so far."""

    def __init__(self, jobs: list[Job], prompt_len: int):
        self.prompt_len = prompt_len
        self.frequency = torch.tensor([[j.frequency_penalty] for j in jobs])
        self.presence = torch.tensor([[j.presence_penalty] for j in jobs])

    def __call__(self, input_ids, scores):
        generated = input_ids[:, self.prompt_len:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency.to(scores) * counts - self.presence.to(scores) * (counts > 0).to(scores)


class _RowBias(LogitsProcessor):
    """OpenAI's logit_bias, one bias table per row."""

    def __init__(self, biases: list[Optional[dict[int, float]]]):
        self.biases, self.table = biases, None

    def __call__(self, input_ids, scores):
        if self.table is None:  # built once per generate: one add per step afterwards
            self.table = torch.zeros_like(scores)
            for row, bias in enumerate(self.biases):
                for token, value in (bias or {}).items():
                    self.table[row, token] = value
        return scores + self.table


class Batcher:
    """The worker thread and its queue. `submit(job)` from any thread; `close()` to stop."""

    def __init__(self, vlm, max_batch_size: int = 8, max_wait_ms: float = 10.0):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.vlm = vlm
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self._queue: queue.Queue = queue.Queue()
        self._backlog: collections.deque[Job] = collections.deque()  # taken from the queue, not yet run
        self.end_token_ids = end_token_ids(vlm)
        self.context = context_length(vlm)
        self._decoder_layers: Optional[list] = None
        self.stats = {"requests": 0, "batches": 0, "rows": 0, "largest_batch": 0, "cancelled": 0,
                      "cancelled_tokens": [], "active": 0}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="vlm-course-batcher")
        self._thread.start()

    def submit(self, job: Job) -> None:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        self.stats["requests"] += 1
        self._queue.put(job)

    def close(self, timeout: float = 30) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker thread

    def _next(self, timeout: Optional[float]) -> Optional[Job]:
        if self._backlog:
            return self._backlog.popleft()
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _gather(self) -> tuple[list[Job], bool]:
        first = self._next(None)
        if first is None:
            return [], True
        group, key, stop = [first], first.group_key(), False
        # Compatible jobs already waiting in the backlog join first.
        for job in list(self._backlog):
            if len(group) < self.max_batch_size and job.group_key() == key:
                self._backlog.remove(job)
                group.append(job)
        deadline = time.perf_counter() + self.max_wait
        while len(group) < self.max_batch_size:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            if job.group_key() == key:
                group.append(job)
            else:
                self._backlog.append(job)
        return group, stop

    def _loop(self) -> None:
        while True:
            group, stop = self._gather()
            live = []
            for job in group:
                if job.cancel.is_set():  # the client left while waiting in the queue
                    self.stats["cancelled"] += 1
                else:
                    live.append(job)
            if live:
                self._run(live)
            if stop:
                break
        leftovers = list(self._backlog)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                leftovers.append(job)
        for job in leftovers:
            job.emit(("error", ShuttingDown(), 503))

    def _run(self, group: list[Job]) -> None:
        try:
            inputs = prepare(self.vlm, [job.conversation for job in group])
        except VLMCourseError as e:
            if len(group) > 1:  # find the culprit: run each alone
                for job in group:
                    self._run([job])
            else:
                group[0].emit(("error", e, 400))
            return
        except Exception as e:  # noqa: BLE001 - never let the worker die
            for job in group:
                job.emit(("error", e, 500))
            return
        prompt_tokens = [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]
        fits, limits = [], []
        for job, n in zip(group, prompt_tokens):
            try:
                limits.append(check_context(n, job.max_new_tokens, self.context, job.max_tokens_explicit))
                fits.append(job)
            except ContextLengthError as e:
                job.emit(("error", e, 400))
        if len(fits) < len(group):
            if fits:
                self._run(fits)
            return
        for job, limit in zip(group, limits):
            job.max_new_tokens = limit
        self._generate(group, inputs, prompt_tokens)

    def _generate(self, group: list[Job], inputs, prompt_tokens: list[int]) -> None:
        first = group[0]
        rows = [_Row(self.vlm, job, n) for job, n in zip(group, prompt_tokens)]
        self.stats["batches"] += 1
        self.stats["rows"] += len(group)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(group))
        self.stats["active"] = len(group)
        prompt_len = inputs["input_ids"].shape[1]
        hooks = self._watch_prefill(group)
        try:
            kwargs = generation_options(self.vlm, max_new_tokens=max(j.max_new_tokens for j in group),
                                        temperature=first.temperature, top_p=first.top_p, seed=first.seed)
            if kwargs.get("do_sample") and first.top_k and first.top_k > 0:
                kwargs["top_k"] = first.top_k
            recorder = _LogprobRecorder() if any(j.logprobs for j in group) else None
            kwargs["stopping_criteria"] = StoppingCriteriaList([_FanOut(rows, self.end_token_ids, prompt_len, recorder)])
            processors = [recorder] if recorder is not None else []
            if any(j.logit_bias for j in group):
                processors.append(_RowBias([j.logit_bias for j in group]))
            if any(j.frequency_penalty or j.presence_penalty for j in group):
                processors.append(_RowPenalties(group, prompt_len))
            if processors:
                kwargs["logits_processor"] = LogitsProcessorList(processors)
            with torch.no_grad():
                self.vlm.model.generate(**inputs, **kwargs)
            for row in rows:  # rows the group's token limit ended
                row.finish(cancelled=row.job.cancel.is_set())
        except _Cancelled:  # every row was cancelled during the prefill
            for row in rows:
                row.finish(cancelled=True)
        except Exception as e:  # noqa: BLE001 - a failed generate fails its rows, not the server
            for row in rows:
                if not row.done:
                    row.done = True
                    row.job.emit(("error", e, 500))
        finally:
            for hook in hooks:
                hook.remove()
            self.stats["active"] = 0
            for row in rows:
                if row.cancelled:
                    self.stats["cancelled"] += 1
                    self.stats["cancelled_tokens"] = (self.stats["cancelled_tokens"] + [len(row.ids)])[-20:]

    def _watch_prefill(self, group: list[Job]) -> list:
        """Hooks on the decoder layers that stop the forward pass once every row is cancelled: a long prefill
        (or one decoding step of a large model) need not run to its end for nobody."""
        layers = self._layers()
        worker = threading.get_ident()

        def check(module, args):
            # Only this worker's forward pass: other threads may use the same model meanwhile (a notebook's
            # chat.generate beside a server running in the background).
            if threading.get_ident() == worker and all(job.cancel.is_set() for job in group):
                raise _Cancelled()

        return [layer.register_forward_pre_hook(check) for layer in layers]

    def _layers(self) -> list:
        """The language model's decoder layers (the prefill's cost), else the longest stack of layers."""
        if self._decoder_layers is None:
            found: list = []
            try:
                found = list(getattr(self.vlm.model.get_decoder(), "layers", None) or [])
            except (AttributeError, NotImplementedError, TypeError, ValueError):
                pass
            if not found:
                for name, module in self.vlm.model.named_modules():
                    if isinstance(module, torch.nn.ModuleList) and name.endswith("layers") and len(module) > len(found):
                        found = list(module)
            self._decoder_layers = found
        return self._decoder_layers
