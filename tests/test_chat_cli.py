"""`vlm-course chat`, driven through a real pseudo-terminal (stdlib pty: the child's controlling terminal,
so Ctrl-C is the terminal's SIGINT, as for a person at the keyboard).

Answers are compared with `chat.generate` on the same conversation (history included), never with
hard-coded strings.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time

import pytest

from _need import need  # skips outside CI, fails in CI

from vlm_course import chat
from vlm_course.shapes import random_scene

pty = need("pty")  # POSIX only
pytestmark = [pytest.mark.slow]

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A child process on a pseudo-terminal: send keys, wait for output."""

    def __init__(self, argv: list[str]):
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TERM="dumb")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its terminal
            os.execve(sys.executable, [sys.executable, *argv], env)
        self.buffer = ""

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: str, timeout: float = 120) -> re.Match:
        regex = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.buffer)
            if match:
                self.buffer = self.buffer[match.end():]
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; the terminal shows:\n{self.buffer[-2000:]}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # the child exited
                    data = b""
                if not data:
                    raise AssertionError(f"the program exited waiting for {pattern!r}:\n{self.buffer[-2000:]}")
                self.buffer += ANSI.sub("", data.decode("utf-8", "replace")).replace("\r\n", "\n")

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                os.read(self.fd, 65536)
            except OSError:
                pass
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("the program did not exit")

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


def answer_of(term: Terminal) -> str:
    return term.expect(r"model> (.*?)\n").group(1).strip()


@pytest.fixture
def scenes(tmp_path):
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"scene{seed}.png"
        random_scene(seed).draw().save(path)
        paths.append(path)
    return paths


def test_a_conversation_with_history_images_and_commands(vlm, scenes):
    first, second = scenes
    term = Terminal(["-m", "vlm_course.cli", "chat", str(first), "--max-new-tokens", "24"])
    try:
        term.expect(r"\[image 1 attached to your next message: .*scene1\.png, 128x128\]")
        term.expect("you> ")
        q1, q2, q3 = "What do we see in this image?", "How many shapes are there?", "What do we see in this image?"
        term.send(q1 + "\r")
        a1 = answer_of(term)
        img1 = chat.load_image(first)
        history = [chat.user(img1, q1)]
        assert a1 == chat.generate(vlm, history, max_new_tokens=24).text
        term.expect("you> ")
        term.send(q2 + "\r")  # a follow-up: the model sees the first turn and its answer
        a2 = answer_of(term)
        history += [chat.assistant(a1), chat.user(q2)]
        assert a2 == chat.generate(vlm, history, max_new_tokens=24).text
        term.expect("you> ")
        term.send("/usage\r")
        usage = term.expect(r"\[last answer: (\d+) prompt tokens, (\d+) completion tokens")
        assert int(usage.group(1)) == chat.generate(vlm, history, max_new_tokens=24).usage.prompt_tokens
        term.expect(r"\[session: 2 answers \(0 stopped\).*1 images in the conversation\]")
        term.send(f"/image {second}\r")
        term.expect(r"\[image 1 attached to your next message: .*scene2\.png")
        term.send(q3 + "\r")
        a3 = answer_of(term)
        history += [chat.assistant(a2), chat.user(chat.load_image(second), q3)]
        assert a3 == chat.generate(vlm, history, max_new_tokens=24).text
        term.expect("you> ")
        term.send("/image /no/such/file.png\r")
        term.expect(r"error: Image file not found")
        term.send("/clear\r")
        term.expect(r"\[conversation cleared\]")
        term.send(q2 + "\r")  # after /clear: a text-only conversation of one turn
        assert answer_of(term) == chat.generate(vlm, [chat.user(q2)], max_new_tokens=24).text
        term.expect("you> ")
        term.send("/quit\r")
        assert term.wait() == 0
    finally:
        term.close()


def test_ctrl_c_stops_the_answer_not_the_program(vlm):
    # Sampling at temperature 2 makes long replies (up to 400 tokens): there is an answer to stop.
    term = Terminal(["-m", "vlm_course.cli", "chat", "--max-new-tokens", "400", "--temperature", "2"])
    try:
        term.expect("you> ")
        stopped = False
        for _ in range(5):
            term.send("Tell me something.\r")
            term.expect("model> ")
            term.expect(r"\S")  # the first piece is out: the answer is being generated
            term.send("\x03")  # Ctrl-C, as the terminal sends it: SIGINT to the program
            # Either the answer was stopped, or it had ended and Ctrl-C met the prompt (which says so).
            done = term.expect(r"(\[stopped\]|Ctrl-D or /quit leaves\])\nyou> ")
            if "[stopped]" in done.group(0):
                stopped = True
                break
        assert stopped, "no answer was still running when Ctrl-C arrived in 5 tries"
        term.send("/usage\r")
        term.expect(r"\(1 stopped\).*?you> ")  # the prompt is printed by input() itself: it is reading now
        for attempt in range(3):  # at the prompt: a hint, and the program goes on
            term.send("\x03")  # (readline can swallow a Ctrl-C that lands while it sets up the line: press again)
            try:
                term.expect(r"Ctrl-D or /quit leaves\]\nyou> ", timeout=5)
                break
            except AssertionError:
                assert attempt < 2, "Ctrl-C at the prompt did nothing three times"
        term.send("/quit\r")
        assert term.wait() == 0
    finally:
        term.close()
