"""Lesson 04 exercise: which attention backend would attn="auto" choose on machines you do not have?

The lesson prints what 'auto' picks on this machine; the exercise asks for four GPUs it does not show.
The truth comes from the package's own decision (`vlm_course.fit.attention_for`, the function load_vlm
calls), given each machine's facts; the checker says how many answers are right, not which.
"""

from __future__ import annotations

from ..fit import DeviceFacts
from ..models import ATTENTION_BACKENDS
from .check import correct, not_solved, wrong

# name -> (what the learner reads, the facts load_vlm would gather there, the dtype asked for: None = 'auto')
MACHINES = {
    "colab-t4": ("Colab's free T4: CUDA, compute capability 7.5, flash-attn installed, dtype='auto'",
                 DeviceFacts("cuda", (7, 5), flash_attn_installed=True), None),
    "a100": ("an A100: CUDA, compute capability 8.0, flash-attn installed, dtype='auto'",
             DeviceFacts("cuda", (8, 0), flash_attn_installed=True), None),
    "h100-no-flash-attn": ("an H100: CUDA, compute capability 9.0, flash-attn NOT installed, dtype='auto'",
                           DeviceFacts("cuda", (9, 0), flash_attn_installed=False), None),
    "a100-float32": ("an A100: CUDA, compute capability 8.0, flash-attn installed, dtype='float32'",
                     DeviceFacts("cuda", (8, 0), flash_attn_installed=True), "float32"),
}


def auto_backend(name: str) -> str:
    """What load_vlm(attn='auto') picks on machine `name` of MACHINES."""
    import torch

    from ..fit import attention_for, dtype_for

    _, facts, dtype = MACHINES[name]
    return attention_for("auto", facts, getattr(torch, dtype) if dtype else dtype_for(facts))[0]


def describe_machines() -> None:
    """Print the machines of the exercise."""
    for name, (what, _, _) in MACHINES.items():
        print(f"{name:<20} {what}")


def check_auto_backends(answers) -> bool | None:
    """True when `answers` maps every machine of MACHINES to the backend attn='auto' picks there.

    The placeholder (None, or any machine still None) is "not solved yet"; wrong answers raise ExerciseError."""
    if answers is None:
        return not_solved("set `answers` to a dict: machine name -> backend name, and run the check again.")
    if not isinstance(answers, dict):
        raise wrong(f"expected a dict of machine name -> backend name, got {type(answers).__name__}.")
    unknown = sorted(set(answers) - set(MACHINES))
    if unknown:
        raise wrong(f"unknown machine(s) {unknown}: the machines are {', '.join(MACHINES)}.")
    missing = [name for name in MACHINES if answers.get(name) is None]
    if missing:
        return not_solved(f"no answer yet for {', '.join(missing)}.")
    bad = [a for a in answers.values() if a not in ATTENTION_BACKENDS]
    if bad:
        raise wrong(f"{bad[0]!r} is not a backend name. Choose from: {', '.join(ATTENTION_BACKENDS)}.")
    right = sum(answers[name] == auto_backend(name) for name in MACHINES)
    if right < len(MACHINES):
        raise wrong(f"{right} of {len(MACHINES)} are right. 'auto' takes flash_attention_2 only where all of what it "
                    "needs is there (a CUDA GPU, its compute capability, the dtype, the flash-attn package: see the "
                    "table above and vlm_course.fit.flash_attention_problem), and sdpa otherwise.")
    return correct("on each machine, 'auto' picks what you said, for the reasons load_vlm would give: "
                   + "; ".join(f"{name}: {answers[name]}" for name in MACHINES) + ".")
