"""vlm_course: the package behind the vision-language model course.

Inference with Idefics2 in Hugging Face transformers, on any machine: the course ships a tiny
trained Idefics2 (the real model and processor classes, a small config) as its default model, and
the same code runs ``HuggingFaceM4/idefics2-8b`` on a GPU.

Importing this package is cheap: heavy libraries (torch, transformers, and the optional
quantization, serving and widget libraries) are imported by the submodules that need them.
"""

__version__ = "0.1.0"

# Before any submodule imports torchao or bitsandbytes: drop their few import-time log lines that say
# nothing to a learner (each one and why: vlm_course/quiet.py). Imports only `logging`.
from .quiet import silence_library_noise as _silence_library_noise  # noqa: E402

_silence_library_noise()

__all__ = ["__version__"]
