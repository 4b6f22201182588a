"""Notebook 04, exercise: a reference solution, run as a cell after the exercise cell (which holds a placeholder).

flash_attention_2 needs all of: a CUDA GPU of compute capability 8.0 or newer, float16 or bfloat16, and the
flash-attn package; 'auto' takes it where all hold, and sdpa otherwise."""

answers = {
    "colab-t4": "sdpa",                  # 7.5 is older than 8.0 (and 'auto' gives float16 there)
    "a100": "flash_attention_2",         # 8.0, bfloat16 by 'auto', flash-attn installed: everything it needs
    "h100-no-flash-attn": "sdpa",        # the GPU could, but the package is missing
    "a100-float32": "sdpa",              # flash-attn kernels exist for half precision only
}
