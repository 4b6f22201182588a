"""`vlm-course chat [IMAGE ...]`: a conversation with the model in the terminal.

    $ vlm-course chat scene.png
    [image 1 attached to your next message: scene.png, 128x128]
    you> What do we see in this image?
    model> a red circle and a blue square.
    you> /image https://example.org/other.png
    you> And in this one?

Answers stream as they are generated and the whole conversation is kept (images included), so a
follow-up question sees the earlier turns. Images go into the conversation as image parts: you never
type `<image>` yourself. Commands: /image PATH_OR_URL (attach to the next message), /clear (forget the
conversation), /usage (tokens and speed of the last answer, and the session's totals), /help, /quit.
Ctrl-C stops the answer being generated (what was said so far stays in the conversation), never the
program; Ctrl-D or /quit leaves.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Optional, TextIO

from .errors import VLMCourseError

HELP = """commands:
  /image PATH_OR_URL   attach an image to your next message (repeatable)
  /clear               forget the conversation and any attached images
  /usage               tokens and speed of the last answer, and this session's totals
  /help                this list
  /quit                leave (or Ctrl-D); Ctrl-C stops an answer, not the program"""


class TerminalChat:
    """The conversation and its commands; `run()` reads lines until /quit or end of input."""

    def __init__(self, vlm, out: TextIO = sys.stdout, **options: Any):
        from .history import ChatHistory

        self.vlm, self.out, self.options = vlm, out, options
        self.history = ChatHistory()
        self.pending: list = []  # images for the next user turn
        self.last = None  # the last answer's Usage
        self.totals = {"answers": 0, "prompt_tokens": 0, "completion_tokens": 0, "stopped": 0}

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    # ------------------------------------------------------------------ commands

    def attach(self, source: str) -> None:
        from .images import load_image

        source = source.strip()
        if not source:
            self.say("usage: /image PATH_OR_URL")
            return
        try:
            image = load_image(source)
        except VLMCourseError as e:
            self.say(f"error: {e}")
            return
        self.pending.append(image)
        self.say(f"[image {len(self.pending)} attached to your next message: {source}, {image.width}x{image.height}]")

    def clear(self) -> None:
        from .history import ChatHistory

        self.history, self.pending = ChatHistory(), []
        self.say("[conversation cleared]")

    def usage(self) -> None:
        u = self.last
        if u is None:
            self.say("[no complete answer yet]")
        else:
            ttft = f"{u.time_to_first_token * 1000:.0f} ms" if u.time_to_first_token else "-"
            self.say(f"[last answer: {u.prompt_tokens} prompt tokens, {u.completion_tokens} completion tokens, "
                     f"first token after {ttft}, {u.tokens_per_second:.1f} tokens/s]")
        t = self.totals
        self.say(f"[session: {t['answers']} answers ({t['stopped']} stopped), {t['prompt_tokens']} prompt tokens, "
                 f"{t['completion_tokens']} completion tokens; {len(self.history.images)} images in the conversation]")

    def command(self, line: str) -> bool:
        """Run a /command; False when it is /quit."""
        name, _, rest = line.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name == "/image":
            self.attach(rest)
        elif name == "/clear":
            self.clear()
        elif name == "/usage":
            self.usage()
        elif name == "/help":
            self.say(HELP)
        else:
            self.say(f"unknown command {name!r}; /help lists them")
        return True

    # ------------------------------------------------------------------ a turn

    def answer(self, text: str) -> None:
        """Stream the model's answer to `text` (with the attached images); Ctrl-C stops it."""
        from .chat import stream

        parts = [*self.pending, text]
        try:
            self.history.add_user(*parts)
        except VLMCourseError as e:
            self.say(f"error: {e}")
            return
        self.pending = []
        try:
            s = stream(self.vlm, self.history.messages, **self.options)
        except VLMCourseError as e:
            self.history.undo()
            self.say(f"error: {e}")
            return
        self.say("model> ", end="")
        stopped = False
        try:
            for piece in s:
                self.say(piece, end="")
        except KeyboardInterrupt:
            stopped = True
            s.close()
        except VLMCourseError as e:
            self.history.undo()
            self.say(f"\nerror: {e}")
            return
        said = s.text
        if stopped:
            self.say(" [stopped]")
        else:
            self.say()
        if said:
            self.history.add_assistant(said)
        else:
            self.history.undo()  # nothing was said: as if the question had not been asked
        if s.usage is not None:  # a stopped answer has no usage of its own
            self.last = s.usage
        self.totals["answers"] += 1
        self.totals["stopped"] += stopped
        if s.usage is not None:
            self.totals["prompt_tokens"] += s.usage.prompt_tokens
            self.totals["completion_tokens"] += s.usage.completion_tokens

    def run(self, read=input) -> int:
        self.say("Type a message, /help for commands, Ctrl-D to leave.")
        while True:
            try:
                line = read("you> ")
            except EOFError:
                self.say()
                return 0
            except KeyboardInterrupt:
                self.say("\n[Ctrl-C stops an answer; Ctrl-D or /quit leaves]")
                continue
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if not self.command(line):
                        return 0
                    continue
                self.answer(line)
            except KeyboardInterrupt:  # Ctrl-C outside the stream (loading an image, before the first piece...)
                if self.history.messages and self.history.messages[-1]["role"] == "user":
                    self.history.undo()  # a question without an answer is not kept
                self.say(" [stopped]")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm-course chat", description="Talk with the model in the terminal.")
    p.add_argument("images", nargs="*", help="images (paths or URLs) for the first message")
    p.add_argument("--model", default=None, help="hub id or directory (default: $VLM_COURSE_MODEL or the tiny model)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .images import load_image
    from .models import load_vlm

    try:
        images = [(src, load_image(src)) for src in args.images]  # a bad image fails before the model loads
        vlm = load_vlm(args.model, device=args.device)
    except VLMCourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Ctrl-C is this program's stop key: take it even when the launcher ignored SIGINT (a process started in
    # the background by a non-interactive shell, nohup, some CI runners), which the child would inherit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    session = TerminalChat(vlm, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    for src, image in images:
        session.pending.append(image)
        session.say(f"[image {len(session.pending)} attached to your next message: {src}, {image.width}x{image.height}]")
    try:
        import readline  # noqa: F401  (line editing and history for input(), where the platform has it)
    except ImportError:
        pass
    return session.run()


if __name__ == "__main__":
    sys.exit(main())
