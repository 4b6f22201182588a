"""The `vlm-course` command: info, draw, ask, eval, bench, serve, train-tiny, finetune, build-test-model."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import VLMCourseError


def cmd_info(args) -> int:
    from .models import load_vlm
    from .system import print_report

    print_report()
    vlm = load_vlm(args.model, device=args.device)
    params = sum(p.numel() for p in vlm.model.parameters())
    print(f"{'loaded':<24}{vlm!r}: {params:,} parameters in {vlm.load_seconds:.2f} s")
    return 0


def cmd_draw(args) -> int:
    from .shapes import detailed_description, random_scene

    scene = random_scene(args.seed)
    scene.draw(args.size).save(args.out)
    print(f"{args.out}: {scene.describe()} ({detailed_description(scene)})")
    return 0


def cmd_ask(args) -> int:
    from .chat import generate, stream
    from .images import load_image
    from .models import load_vlm

    images = [load_image(src) for src in args.images]  # a bad image fails before the model loads
    content = [{"type": "image", "image": img} for img in images] + [{"type": "text", "text": args.question}]
    messages = [{"role": "user", "content": content}]
    vlm = load_vlm(args.model, device=args.device, adapter=args.adapter)
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    if args.stream:
        s = stream(vlm, messages, **options)
        for piece in s:
            print(piece, end="", flush=True)
        print()
        usage = s.usage
    else:
        reply = generate(vlm, messages, **options)
        print(reply.text)
        usage = reply.usage
    if args.usage:
        print(json.dumps(usage.as_dict(), indent=2), file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from .models import load_vlm
    from .shapes.evaluate import BARS, PERTURBED_BAR, SINGLE_IMAGE_FAMILIES, evaluate, format_scores

    vlm = load_vlm(args.model, device=args.device)
    from .caption import is_blip2

    if is_blip2(vlm):  # captions and "Question: ... Answer:" prompts: its own families and table
        from .tiny_blip2.evaluate import cli_eval

        return cli_eval(vlm, args)
    families = args.families.split(",") if args.families else None
    scores = evaluate(vlm, families, n=args.n, seed=args.seed, batch_size=args.batch_size)
    print(f"Exact match on {args.n} held-out questions per family ({vlm.name}):")
    print(format_scores(scores, BARS))
    single = [s for f, s in scores.items() if f in SINGLE_IMAGE_FAMILIES]
    if single:
        correct, total = sum(s.correct for s in single), sum(s.total for s in single)
        print(f"single-image overall: {correct}/{total} = {correct / total:.1%}")
    result = {f: {"correct": s.correct, "total": s.total, "accuracy": s.accuracy,
                  "mistakes": [dict(zip(("question", "expected", "got"), m)) for m in s.mistakes[:5]]}
              for f, s in scores.items()}  # a few mistakes, for the model card
    ok = all(s.accuracy >= BARS.get(f, 0) for f, s in scores.items())
    if not args.no_perturbed:
        perturbed = evaluate(vlm, families, n=max(1, args.n // 5), seed=args.seed, perturbed=True,
                             batch_size=args.batch_size)
        correct, total = sum(s.correct for s in perturbed.values()), sum(s.total for s in perturbed.values())
        print(f"perturbed scenes (jitter, tint, JPEG 75, drawn at 256 px): {correct}/{total} = {correct / total:.1%}"
              f"  (bar {PERTURBED_BAR:.0%})")
        result["perturbed"] = {"correct": correct, "total": total, "accuracy": correct / total}
        ok = ok and correct / total >= PERTURBED_BAR
    if args.show_mistakes:
        for f, s in scores.items():
            for q, want, got in s.mistakes[: args.show_mistakes]:
                print(f"  [{f}] {q!r}: expected {want!r}, got {got!r}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if ok or not args.strict else 1


def cmd_train_tiny(args) -> int:
    if args.model == "blip2":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shares the CPU gracefully with other work
        from .tiny_blip2.train import cli_train

        return cli_train(args)
    from .tiny.train import TrainConfig, train_tiny

    given = {name: getattr(args, name) for name in ("vision_steps", "steps", "polish_steps", "batch_size", "seed",
                                                    "threads", "workers")}
    cfg = TrainConfig(**{name: value for name, value in given.items() if value is not None})  # else the recipe's
    out = train_tiny(args.out or "runs/tiny", cfg)
    print(f"saved the trained model and its loss curve to {out}")
    print(f"evaluate it with: vlm-course eval --model {out}")
    return 0


def cmd_build_test_model(args) -> int:
    from .testmodel import build_test_model

    out = build_test_model(args.out, like=args.like, seed=args.seed)
    print(f"wrote a random-weight model shaped like {args.like} to {out}")
    print(f"use it with: VLM_COURSE_MODEL={out} (answers are noise; the code paths are the real model's)")
    return 0


def cmd_finetune(args) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shares the CPU gracefully with other work
    from .finetune import FineTuneConfig, finetune, report

    given = {name: getattr(args, name) for name in ("steps", "batch_size", "lr", "rank", "seed", "threads")}
    cfg = FineTuneConfig(method=args.method, concept=args.concept,
                         **{name: value for name, value in given.items() if value is not None})
    run = finetune(args.model, args.out, cfg)
    print(report(run, n=args.eval_n, n_old=args.eval_old))
    return 0


# Subcommands with their own argument parsers, in the module that implements them.
FORWARDED = {"bench": ".bench", "serve": ".serve", "chat": ".terminal_chat"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm-course", description="Vision-language model inference course tools.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_model(sp):
        sp.add_argument("--model", default=None, help="hub id or directory (default: $VLM_COURSE_MODEL or the tiny model)")
        sp.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
        return sp

    with_model(sub.add_parser("info", help="versions, device and model")).set_defaults(func=cmd_info)

    sp = sub.add_parser("draw", help="draw a shapes scene to a PNG and print its true description")
    sp.add_argument("out")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--size", type=int, default=128)
    sp.set_defaults(func=cmd_draw)

    sp = with_model(sub.add_parser("ask", help="ask a question about one or more images"))
    sp.add_argument("images", nargs="*", help="image paths or URLs (none: a text-only question)")
    sp.add_argument("question")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--temperature", type=float, default=0.0)
    sp.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    sp.add_argument("--usage", action="store_true", help="print token counts and speeds to stderr")
    sp.add_argument("--adapter", default=None, metavar="DIR", help="a LoRA adapter from `vlm-course finetune`")
    sp.set_defaults(func=cmd_ask)

    sp = with_model(sub.add_parser("eval", help="exact-match accuracy on held-out shapes questions"))
    sp.add_argument("--n", type=int, default=500, help="questions per family")
    sp.add_argument("--families", default=None, help="comma-separated subset of question families")
    sp.add_argument("--seed", type=int, default=7)
    sp.add_argument("--batch-size", type=int, default=50)
    sp.add_argument("--no-perturbed", action="store_true", help="skip the perturbed-scenes figure")
    sp.add_argument("--show-mistakes", type=int, default=0, metavar="K", help="print up to K mistakes per family")
    sp.add_argument("--json", default=None, help="also write the scores to this JSON file")
    sp.add_argument("--strict", action="store_true", help="exit 1 if a bar is not met")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("train-tiny", help="train the tiny Idefics2 (or BLIP-2) from scratch (CPU, tens of minutes)")
    sp.add_argument("--model", choices=("idefics2", "blip2"), default="idefics2", help="which tiny model to train")
    sp.add_argument("--out", default=None, help="output directory (default: runs/tiny or runs/tiny-blip2)")
    # defaults (None) leave the shipped recipe's value: vlm_course/tiny/train.py, TrainConfig
    sp.add_argument("--vision-steps", type=int, help="steps of the vision tower's pretraining (stage 0)")
    sp.add_argument("--steps", type=int, help="steps of the main stage")
    sp.add_argument("--polish-steps", type=int, help="steps of the second stage, the polish (0: none)")
    sp.add_argument("--batch-size", type=int)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--threads", type=int, help="torch threads for the model (the recipe's 2 share the data worker's core)")
    sp.add_argument("--workers", type=int, help="processes drawing batches (0: draw them in-process)")
    sp.set_defaults(func=cmd_train_tiny)

    sp = sub.add_parser("build-test-model", help="an idefics2-8b-shaped model with random weights, in seconds")
    sp.add_argument("--like", default="idefics2-8b", help="the model whose shape to copy (idefics2-8b)")
    sp.add_argument("--out", required=True, help="directory to write (load it with --model DIR)")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_build_test_model)

    sp = with_model(sub.add_parser("finetune", help="teach the model a new colour with LoRA, QLoRA or full fine-tuning"))
    sp.add_argument("--concept", default="pink", help="the new colour to learn (default: pink)")
    sp.add_argument("--method", default="lora", help="lora, qlora (4-bit base + LoRA) or full")
    sp.add_argument("--out", default="runs/finetune", help="directory for the adapter (or model), loss curve, record")
    # defaults (None) leave the recipe's value: vlm_course/finetune.py, FineTuneConfig
    sp.add_argument("--steps", type=int)
    sp.add_argument("--batch-size", type=int)
    sp.add_argument("--lr", type=float)
    sp.add_argument("--rank", type=int, help="LoRA rank")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--threads", type=int, help="torch threads")
    sp.add_argument("--eval-n", type=int, default=100, help="held-out questions per probe after training (0: none)")
    sp.add_argument("--eval-old", type=int, default=0, help="also this many questions per old family (forgetting)")
    sp.set_defaults(func=cmd_finetune)

    sub.add_parser("bench", help="measure speed, memory and quality (see: vlm-course bench --help)")
    sub.add_parser("serve", help="OpenAI-compatible server (see: vlm-course serve --help)")
    sub.add_parser("chat", help="talk with the model in the terminal (see: vlm-course chat --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in FORWARDED:
            import importlib

            return importlib.import_module(FORWARDED[argv[0]], __package__).main(argv[1:]) or 0
        args = build_parser().parse_args(argv)
        return args.func(args)
    except VLMCourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
