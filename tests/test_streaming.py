"""stream(): pieces as they come, equal to generate, errors reach the consumer, close() stops the model."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import pytest

from vlm_course.chat import IncrementalDecoder, generate, stream
from vlm_course.errors import GenerationError, MessagesError
from vlm_course.messages import user
from vlm_course.shapes import make_sample, random_scene

SPECIAL = ("<image>", "<fake_token_around_image>", "<end_of_utterance>", "<pad>", "</s>", "<s>", "<unk>")


def _conversations():
    rng = random.Random(5)
    return [[user(random_scene(31).draw(), "Describe this image in detail.")],
            [user(random_scene(32).draw(), "What do we see in this image?")],
            make_sample("multi_turn", rng).prompt, make_sample("two_images", rng).prompt,
            [user("What is the capital of France?")]]


@pytest.mark.parametrize("index", range(5))
def test_pieces_join_to_exactly_what_generate_returns(vlm, index):
    msgs = _conversations()[index]
    reply = generate(vlm, msgs, max_new_tokens=60)
    s = stream(vlm, msgs, max_new_tokens=60)
    pieces = list(s)
    assert "".join(pieces) == reply.text == s.text
    assert all(pieces) and not any(tok in p for p in pieces for tok in SPECIAL)
    assert s.finish_reason == reply.finish_reason
    assert s.token_ids == reply.token_ids
    assert s.usage.completion_tokens == reply.usage.completion_tokens
    assert s.usage.prompt_tokens == reply.usage.prompt_tokens
    assert 0 < s.usage.time_to_first_token <= s.usage.seconds
    assert len(s.token_times) == s.tokens_generated >= len(reply.token_ids)


def test_a_long_reply_arrives_in_many_pieces(vlm):
    s = stream(vlm, _conversations()[0], max_new_tokens=80)
    pieces = list(s)
    assert len(pieces) >= 5
    assert s.usage.decode_tokens_per_second and s.usage.decode_tokens_per_second > 0
    assert s.token_times == sorted(s.token_times)


@pytest.mark.parametrize("cut", [4, 9, 15])
def test_stop_strings_stream_like_generate(vlm, cut):
    msgs = _conversations()[0]
    full = generate(vlm, msgs, max_new_tokens=60).text
    stop = full[cut:cut + 5]
    reply = generate(vlm, msgs, max_new_tokens=60, stop=stop)
    s = stream(vlm, msgs, max_new_tokens=60, stop=stop)
    assert "".join(s) == reply.text
    assert stop not in reply.text and s.finish_reason == reply.finish_reason == "stop"


def test_length_limit_streams_like_generate(vlm):
    msgs = _conversations()[0]
    reply = generate(vlm, msgs, max_new_tokens=7)
    s = stream(vlm, msgs, max_new_tokens=7)
    assert "".join(s) == reply.text and s.finish_reason == reply.finish_reason == "length"


def test_incremental_decoding_equals_decoding_everything(vlm):
    tok = vlm.tokenizer
    for text in ("a red circle and a blue square.", "There are three shapes. A green triangle is on the left.",
                 "Café, naïve, 日本 and 🙂 emoji", "  spaces   and\nnew lines "):
        ids = tok.encode(text, add_special_tokens=False)
        decoder = IncrementalDecoder(tok)
        assert "".join(decoder.add(i) for i in ids) == tok.decode(ids, skip_special_tokens=True)


def test_bad_messages_fail_at_the_call_not_in_a_thread(vlm):
    with pytest.raises(MessagesError):
        stream(vlm, [{"role": "user", "content": "hello"}])


class _Hook:
    """A forward hook on the real model, registered for one test and removed after it."""

    def __init__(self, vlm, fn):
        self.calls = 0
        self.fn = fn
        self.handle = vlm.model.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1
        return self.fn(self.calls, output)

    def remove(self):
        self.handle.remove()


def test_an_error_in_generation_reaches_the_consumer(vlm):
    def fail_on_fourth_call(calls, output):
        if calls == 4:
            raise RuntimeError("boom in the model's forward pass")

    hook = _Hook(vlm, fail_on_fourth_call)
    try:
        s = stream(vlm, _conversations()[0], max_new_tokens=60)
        pieces = []
        with pytest.raises(GenerationError, match="boom") as info:
            for piece in s:
                pieces.append(piece)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert s.tokens_generated == 3  # forward calls 1-3 produced tokens, call 4 failed
        assert not s.running
    finally:
        hook.remove()
    assert generate(vlm, _conversations()[0], max_new_tokens=60).text.startswith("".join(pieces))


def test_ctrl_c_interrupts_the_loop_not_wrapped(vlm):
    """KeyboardInterrupt inside generate (Ctrl-C in a notebook) reaches the loop as itself; the stream then ends."""
    def interrupt_on_third_call(calls, output):
        if calls == 3:
            raise KeyboardInterrupt

    hook = _Hook(vlm, interrupt_on_third_call)
    try:
        s = stream(vlm, _conversations()[0], max_new_tokens=60)
        pieces = []
        with pytest.raises(KeyboardInterrupt):
            for piece in s:
                pieces.append(piece)
    finally:
        hook.remove()
    assert not s.running and s.tokens_generated == 2
    rest = "".join(s)  # reading on ends the stream (with anything held back), without an error
    assert "".join(pieces) + rest == s.text
    assert s.text and generate(vlm, _conversations()[0], max_new_tokens=60).text.startswith(s.text)


def test_an_error_during_prefill_is_raised_at_once(vlm):
    def fail_first(calls, output):
        raise ValueError("prefill failed")

    hook = _Hook(vlm, fail_first)
    try:
        s = stream(vlm, _conversations()[1])
        with pytest.raises(GenerationError, match="prefill failed"):
            next(s)
    finally:
        hook.remove()


def test_a_slow_prefill_is_waited_for_not_ended_early(vlm):
    """No timeout in the consumer: a prefill slower than any polling interval still gives the whole reply,
    and the time to first token includes the prefill (an interval inside it, measured on the same clock)."""
    prefill = {}

    def slow_first(calls, output):
        if calls == 1:
            start = time.perf_counter()
            time.sleep(1.0)  # stands in for a big model's long prefill
            prefill["seconds"] = time.perf_counter() - start

    msgs = _conversations()[1]
    expected = generate(vlm, msgs).text
    hook = _Hook(vlm, slow_first)
    try:
        s = stream(vlm, msgs)
        assert "".join(s) == expected
        assert s.usage.time_to_first_token >= prefill["seconds"]  # an ordering of clock readings, not a speed
    finally:
        hook.remove()


def _never_end(vlm):
    end_ids = sorted({vlm.tokenizer.convert_tokens_to_ids("<end_of_utterance>"), vlm.tokenizer.eos_token_id})

    def fn(calls, output):
        output.logits[..., end_ids] = float("-inf")  # the model can never finish its turn
    return fn


def test_close_stops_generation(vlm):
    max_new = 400
    hook = _Hook(vlm, _never_end(vlm))
    try:
        s = stream(vlm, _conversations()[0], max_new_tokens=max_new)
        first = next(s)
        assert first
        s.close()
        assert not s.running
        produced = s.tokens_generated
        assert produced < max_new // 4, produced
        assert hook.calls <= produced + 1
        with pytest.raises(StopIteration):
            next(s)
        # Without close(), the same stream really runs to max_new_tokens: the limit above means something.
        s2 = stream(vlm, _conversations()[0], max_new_tokens=60)
        assert sum(1 for _ in s2) > 0 and s2.tokens_generated == 60 and s2.finish_reason == "length"
    finally:
        hook.remove()


def test_leaving_a_with_block_stops_generation(vlm):
    hook = _Hook(vlm, _never_end(vlm))
    try:
        with stream(vlm, _conversations()[0], max_new_tokens=400) as s:
            next(s)
        assert not s.running and s.tokens_generated < 100
    finally:
        hook.remove()


def test_close_from_another_thread_ends_the_reading_loop(vlm):
    """The app's Stop button: a worker thread reads, the main thread closes; the loop ends at the next token."""
    hook = _Hook(vlm, _never_end(vlm))
    try:
        s = stream(vlm, _conversations()[0], max_new_tokens=400)
        started, pieces = threading.Event(), []

        def read():
            for piece in s:
                pieces.append(piece)
                started.set()

        worker = threading.Thread(target=read)
        worker.start()
        assert started.wait(30)
        s.close()
        worker.join(30)
        assert not worker.is_alive() and not s.running
        assert 0 < s.tokens_generated < 400 and len(pieces) <= s.tokens_generated
    finally:
        hook.remove()


def test_generate_runs_in_the_reading_thread(vlm):
    """No second thread: generate is paused and resumed in a greenlet of the loop's thread."""
    threads = threading.active_count()
    s = stream(vlm, _conversations()[0], max_new_tokens=30)
    next(s)
    assert threading.active_count() == threads and s.running
    "".join(s)
    assert not s.running


def test_a_stream_is_read_by_one_thread(vlm):
    s = stream(vlm, _conversations()[0], max_new_tokens=30)
    next(s)
    errors = []

    def read_elsewhere():
        try:
            next(s)
        except GenerationError as e:
            errors.append(str(e))

    worker = threading.Thread(target=read_elsewhere)
    worker.start()
    worker.join(30)
    assert errors and "read by one thread" in errors[0]
    assert "".join(s)  # the reading thread can still finish it


def test_other_greenlets_of_the_thread_may_read_it(vlm):
    """Code that runs in greenlets itself (gevent, playwright's sync API) can read a stream from any of them."""
    import greenlet

    messages = _conversations()[0]
    s = stream(vlm, messages, max_new_tokens=40)
    first = greenlet.greenlet(lambda: next(s)).switch()
    rest = "".join(s)
    assert first and first + rest == s.text == generate(vlm, messages, max_new_tokens=40).text


def test_the_loops_grad_mode_is_its_own(vlm):
    """torch keeps grad mode per thread, and generate (no_grad) shares the loop's thread: it must not leak."""
    import torch

    assert torch.is_grad_enabled()
    for _ in stream(vlm, _conversations()[0], max_new_tokens=20):
        assert torch.is_grad_enabled()  # generate runs under no_grad, paused right here
    with torch.no_grad():
        text = "".join(stream(vlm, _conversations()[1], max_new_tokens=20))
        assert not torch.is_grad_enabled() and text
    assert torch.is_grad_enabled()


EXIT_SCRIPT = """
from vlm_course.chat import stream
from vlm_course.messages import user
from vlm_course.models import load_vlm
from vlm_course.shapes import random_scene

vlm = load_vlm()
done = stream(vlm, [user(random_scene(4).draw(), "How many shapes are there?")])
print("".join(done), flush=True)  # ends at its end token, generate unwound from its streamer
end_ids = sorted({vlm.tokenizer.convert_tokens_to_ids("<end_of_utterance>"), vlm.tokenizer.eos_token_id})
vlm.model.register_forward_hook(lambda module, args, out: out.logits.__setitem__((..., end_ids), float("-inf")))
abandoned = stream(vlm, [user(random_scene(3).draw(), "Describe this image in detail.")], max_new_tokens=2000)
print(next(abandoned), flush=True)  # then exit while it is still generating
"""


def test_a_stream_runs_no_thread(vlm):
    """Why exit cannot race: generate runs in a greenlet of the reading thread, so an abandoned stream leaves no
    thread inside torch. (When streams ran generate in threads, one still inside torch at shutdown aborted the
    process, "terminate called without an active exception", about one exit in four.) Checked directly,
    which fails every time on a threaded stream, instead of hunting the race."""
    before = set(threading.enumerate())
    hook = _Hook(vlm, _never_end(vlm))
    s = None
    try:
        s = stream(vlm, _conversations()[0], max_new_tokens=200)
        next(s)
        assert s.running  # generate is mid-reply, paused...
        assert set(threading.enumerate()) - before == set()  # ...and no thread was started for it
    finally:
        hook.remove()
        if s is not None:
            s.close()


def test_the_interpreter_exits_cleanly_with_streams_running():
    """A stream abandoned mid-generation (generate paused inside torch) must not break the interpreter's exit."""
    out = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] in ("one.", "two.", "three.")


# --- thread_stream: transformers' TextIteratorStreamer, generate in a second thread ---------------

BOTH_MODELS = pytest.mark.parametrize("model", ["vlm", "test_vlm"])  # the tiny model, the idefics2-8b-shaped one


def _threads():
    """The live threads that thread_stream started (it names them). Compared with what was there before a test:
    other threads (tqdm's monitor, a loader's pool) may come and go meanwhile, and are not this test's business."""
    return {t for t in threading.enumerate() if t.is_alive() and t.name == "vlm-course generate"}


@BOTH_MODELS
@pytest.mark.parametrize("index", range(5))
def test_thread_stream_yields_what_generate_returns(request, model, index):
    from vlm_course.streaming import thread_stream

    vlm = request.getfixturevalue(model)
    msgs = _conversations()[index]
    before = _threads()
    for max_new in (60, 7):  # an end token, and the length limit
        reply = generate(vlm, msgs, max_new_tokens=max_new)
        s = thread_stream(vlm, msgs, max_new_tokens=max_new)
        pieces = list(s)
        assert "".join(pieces) == s.text == reply.text
        assert all(pieces) and not any(tok in p for p in pieces for tok in SPECIAL)
        assert not s.running and not _threads() - before  # the thread was joined when the queue ended


@BOTH_MODELS
def test_thread_stream_raises_an_error_from_inside_generate(request, model):
    from vlm_course.streaming import thread_stream

    vlm = request.getfixturevalue(model)
    msgs = _conversations()[0]
    before = _threads()

    def fail_on_fourth_call(calls, output):
        if calls == 4:
            raise RuntimeError("boom in the model's forward pass")

    hook = _Hook(vlm, fail_on_fourth_call)
    try:
        s = thread_stream(vlm, msgs, max_new_tokens=60, timeout=None)  # no timeout: the error alone ends the wait
        pieces = []
        with pytest.raises(GenerationError, match="boom") as info:
            for piece in s:
                pieces.append(piece)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert hook.calls == 4 and not s.running and not _threads() - before
    finally:
        hook.remove()
    assert generate(vlm, msgs, max_new_tokens=60).text.startswith("".join(pieces))


def test_thread_stream_raises_an_error_in_the_prefill(vlm):
    from vlm_course.streaming import thread_stream

    def fail_first(calls, output):
        raise ValueError("prefill failed")

    hook = _Hook(vlm, fail_first)
    try:
        s = thread_stream(vlm, _conversations()[1], timeout=None)
        with pytest.raises(GenerationError, match="prefill failed"):
            next(s)
        assert not s.running
    finally:
        hook.remove()


@BOTH_MODELS
def test_thread_stream_close_stops_generation_and_joins_the_thread(request, model):
    from vlm_course.chat_bench import count_forward_passes
    from vlm_course.streaming import thread_stream

    vlm = request.getfixturevalue(model)
    before = _threads()
    hook = _Hook(vlm, _never_end(vlm))
    try:
        def read_one_piece_then_close():
            s = thread_stream(vlm, _conversations()[0], max_new_tokens=400)
            first = next(s)
            s.close()
            return s, first

        (s, first), passes = count_forward_passes(vlm, read_one_piece_then_close)
        assert first and not s.running and not _threads() - before
        assert passes < 400 // 4, passes
        with pytest.raises(StopIteration):
            next(s)
        # Without close(), the same stream really runs to max_new_tokens: the limit above means something.
        s2, passes2 = count_forward_passes(
            vlm, lambda: list(thread_stream(vlm, _conversations()[0], max_new_tokens=60)))
        assert s2 and passes2 == 60
    finally:
        hook.remove()


def test_thread_stream_with_block_and_break_stop_generation(vlm):
    from vlm_course.chat_bench import count_forward_passes
    from vlm_course.streaming import thread_stream

    before = _threads()
    hook = _Hook(vlm, _never_end(vlm))
    try:
        def leave_with_block():
            with thread_stream(vlm, _conversations()[0], max_new_tokens=400) as s:
                next(s)
            return s

        s, passes = count_forward_passes(vlm, leave_with_block)
        assert not s.running and passes < 100

        def break_out():  # no close(), no with: the dropped stream cancels generation
            for _ in thread_stream(vlm, _conversations()[0], max_new_tokens=400):
                break
            for t in _threads() - before:
                t.join(30)

        _, passes = count_forward_passes(vlm, break_out)
        assert passes < 100 and not _threads() - before
    finally:
        hook.remove()


@BOTH_MODELS
def test_thread_stream_times_out_when_generate_never_produces(request, model):
    from vlm_course.chat_bench import count_forward_passes
    from vlm_course.errors import GenerationTimeout
    from vlm_course.streaming import thread_stream

    vlm = request.getfixturevalue(model)
    before = _threads()
    release = threading.Event()

    def stuck_prefill(calls, output):
        if calls == 1:
            release.wait(120)  # generate is stuck in its first forward pass until the test releases it

    hook = _Hook(vlm, stuck_prefill)
    try:
        def read():
            s = thread_stream(vlm, _conversations()[0], max_new_tokens=400, timeout=0.5)
            with pytest.raises(GenerationTimeout, match="No text from generate"):
                next(s)
            assert s.running and s.thread in _threads() and not release.is_set()  # gave up while generate was stuck
            release.set()
            s.close()  # generate stops after its current step; the thread is joined
            return s

        s, passes = count_forward_passes(vlm, read)
        assert not s.running and not _threads() - before
        assert passes <= 2, passes  # the stuck prefill, then at most one step before the cancel was seen
    finally:
        release.set()
        hook.remove()


def test_thread_stream_refuses_bad_input_before_starting_a_thread(vlm):
    from vlm_course.streaming import thread_stream

    before = _threads()
    with pytest.raises(MessagesError):
        thread_stream(vlm, [{"role": "user", "content": "hello"}])
    with pytest.raises(GenerationError, match="stop strings"):
        thread_stream(vlm, _conversations()[0], stop=".")
    with pytest.raises(GenerationError, match="timeout"):
        thread_stream(vlm, _conversations()[0], timeout=0)
    assert not _threads() - before


def test_measure_stream_overhead_compares_the_three_ways(vlm):
    from vlm_course import tables
    from vlm_course.chat_bench import measure_stream_overhead

    import torch

    threads = torch.get_num_threads()
    r = measure_stream_overhead(vlm, max_new_tokens=20, repeats=1, progress=False)
    assert r["torch_threads"] == 1 and torch.get_num_threads() == threads  # one thread meanwhile, then as it was
    assert r["same_text"] and r["thread_same_text"] and r["completion_tokens"] > 5
    for way in ("generate", "thread", "stream"):
        assert r[f"{way}_seconds"] > 0 and r[f"{way}_tokens_per_second"] > 0
    assert 0 < r["thread_time_to_first_piece"] <= r["thread_seconds"]
    assert 0 < r["stream_time_to_first_piece"] <= r["stream_seconds"]

    table = tables.streaming(r)
    assert list(table.index) == ["generate", "thread_stream (thread)", "stream (greenlet)"]
    assert not table.isna().any().any() and (table > 0).all().all()
