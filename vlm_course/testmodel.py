"""An idefics2-8b-shaped model with random weights, built in seconds: the real model's code paths on a laptop.

    build_test_model("runs/idefics2-8b-test")      # or: vlm-course build-test-model --like idefics2-8b --out DIR
    vlm = load_vlm("runs/idefics2-8b-test")

Like transformers' own tests on tiny random checkpoints: everything a learner's code can see of
HuggingFaceM4/idefics2-8b is kept (the processor with image splitting on and sizes 378/980, patch 14,
64 perceiver latents so an image costs 320 `<image>` tokens, a Llama-style byte-fallback tokenizer that
starts every text with `<s>`, the three image/turn tokens at the end of the vocabulary, the chat template,
generation ending at `<end_of_utterance>`), and only the widths and depths are small. Its answers are
noise, but they vary from prompt to prompt and end: the init is wider than transformers' default (with
std 0.02 every prompt greedily loops on the same two tokens) and `<end_of_utterance>` is made likelier
the longer a reply runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ModelNotFoundError
from .quiet import short_bars

DATA_DIR = Path(__file__).parent / "data"
LIKE = {"idefics2-8b": DATA_DIR / "idefics2-8b-config.json"}
# The published processor of HuggingFaceM4/idefics2-8b (processor_config.json / preprocessor_config.json).
PROCESSORS = {"idefics2-8b": dict(do_image_splitting=True, size={"longest_edge": 980, "shortest_edge": 378},
                                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])}
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]  # added last, as in idefics2-8b
# Small widths and depths; every ratio the real config fixes (4 query heads a KV head, latents, patch grid)
# is kept, and every Linear's output is a multiple of 32, as in the real model (bitsandbytes' CPU 4-bit
# kernels need it).
SMALL = dict(vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
             perceiver=dict(resampler_depth=1, resampler_head_dim=32, resampler_n_heads=4, num_key_value_heads=1),
             text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=1))
INIT_STD = 0.2  # wide enough that greedy replies differ between prompts (see the module docstring)
# The end-of-reply signal (see _make_replies_end): about 1 word piece in 7 ends a reply.
END_SHARE, END_SIGNAL, END_READ = 0.15, 2.0, 60.0
VOCAB_SIZE = 800  # learnt pieces beside the 256 byte tokens; idefics2-8b has 32,000


def byte_fallback_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A Llama-style tokenizer like idefics2-8b's: BPE over '▁'-joined words, every byte as a fallback token
    (<0x00> ... <0xFF>), <s> added before each text, then the image and turn tokens last in the vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, LlamaTokenizer

    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)  # pieces within words, like Llama's
    trainer_tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                              special_tokens=["<unk>", "<s>", "</s>"]))
    learnt = json.loads(trainer_tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learnt["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    tok = LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                         pad_token="<unk>", add_bos_token=True, add_eos_token=False, model_max_length=32768,
                         padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, normalized=False, special=True)
                                                          for t in IMAGE_TOKENS]})
    return tok


def _reference(like: str) -> dict:
    if like not in LIKE:
        raise ModelNotFoundError(f"No test model is defined like {like!r}. Choose one of: {', '.join(LIKE)}.")
    return json.loads(LIKE[like].read_text())


def build_processor(like: str = "idefics2-8b"):
    """The processor of `like` as published (image splitting, sizes, image_seq_len, chat template) around a
    small byte-fallback tokenizer; also what `vlm-course bench --config idefics2-8b --random-weights` uses."""
    from transformers import Idefics2ImageProcessorPil, Idefics2Processor

    from .tiny.build import CHAT_TEMPLATE, tokenizer_corpus

    reference = _reference(like)
    return Idefics2Processor(image_processor=Idefics2ImageProcessorPil(**PROCESSORS[like]),
                             tokenizer=byte_fallback_tokenizer(tokenizer_corpus(2000)),
                             image_seq_len=reference["perceiver_config"]["resampler_n_latents"],
                             chat_template=CHAT_TEMPLATE)


def build_test_model(out_dir: str | os.PathLike, like: str = "idefics2-8b", seed: int = 0) -> Path:
    """Write a random-weight model shaped like `like` (see LIKE) to out_dir; load it with load_vlm(out_dir)."""
    import torch
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration

    reference = _reference(like)
    processor = build_processor(like)
    tokenizer = processor.tokenizer
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in IMAGE_TOKENS}

    def shaped(part: str, **drop) -> dict:
        cfg = {k: v for k, v in reference[part].items() if k not in drop}
        return {**cfg, **SMALL[part.split("_")[0]], "initializer_range": INIT_STD}

    text = shaped("text_config")
    perceiver = {**shaped("perceiver_config"), "hidden_size": text["hidden_size"], "rms_norm_eps": text["rms_norm_eps"]}
    text.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
    config = Idefics2Config(vision_config=shaped("vision_config"), perceiver_config=perceiver,
                            text_config=text, image_token_id=ids["<image>"],
                            tie_word_embeddings=reference.get("tie_word_embeddings", False), use_cache=True)
    config.initializer_range = INIT_STD
    torch.manual_seed(seed)
    model = Idefics2ForConditionalGeneration(config)
    with torch.no_grad():
        # Latents start all equal to one in Idefics2: then all 64 image tokens are the same. Spread them.
        latents = model.model.connector.perceiver_resampler.latents
        latents.copy_(torch.randn_like(latents))
        _make_replies_end(model, tokenizer, ids["<end_of_utterance>"], seed)
    gen = model.generation_config
    gen.bos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    gen.eos_token_id = [tokenizer.eos_token_id, ids["<end_of_utterance>"]]
    gen.do_sample, gen.max_new_tokens = False, 64
    out = Path(out_dir).expanduser()
    with short_bars():  # 5 MB: no "Writing model shards" bar for a save under a second
        model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "README.md").write_text(
        f"# Test model shaped like {like}\n\nRandom weights (seed {seed}), built by `vlm-course build-test-model "
        f"--like {like}` in vlm_course/testmodel.py: {sum(p.numel() for p in model.parameters()):,} parameters. "
        "Its answers are noise; its processor, tokenizer, chat template and special tokens behave like the real "
        "model's. For tests and for running the course's code paths without the real weights.\n")
    return out


def _make_replies_end(model, tokenizer, end_id: int, seed: int) -> None:
    """Random weights never pick <end_of_utterance> by themselves. The residual stream carries each input
    token's embedding on to the next prediction, so one hidden dimension that no layer writes to is set aside
    as an 'end here' signal: +END_SIGNAL in the embedding of a random share of the word pieces, -END_SIGNAL in
    the others (every piece ending in ':', as the prompt does, among them), and <end_of_utterance>'s output row
    reads it. A reply then ends right after it writes one of them: never empty, a few words long.
    Bytes, <unk>, <s> and the image tokens get zero output rows: the wide init would pick them too often."""
    import torch

    embed, lm_head = model.get_input_embeddings().weight, model.lm_head.weight
    vocab = tokenizer.get_vocab()
    pieces = torch.tensor(sorted(i for t, i in vocab.items() if not t.startswith("<") and not t.endswith(":") and t != "▁"))
    g = torch.Generator().manual_seed(seed)
    enders = pieces[torch.randperm(len(pieces), generator=g)[: int(len(pieces) * END_SHARE)]]
    signal = embed.shape[1] - 1
    embed[:, signal] = -END_SIGNAL
    embed[enders, signal] = END_SIGNAL
    for layer in model.model.text_model.layers:  # no layer writes to it: it holds the current token's flag
        layer.self_attn.o_proj.weight[signal] = 0
        layer.mlp.down_proj.weight[signal] = 0
    lm_head[end_id] = 0
    lm_head[end_id, signal] = END_READ
    for t, i in vocab.items():
        if t.startswith("<") and i != end_id:
            lm_head[i] = 0
