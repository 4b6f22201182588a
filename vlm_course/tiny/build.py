"""Build the tiny Idefics2: a byte-level BPE tokenizer, the real Idefics2 processor and chat template,
and a small `Idefics2ForConditionalGeneration` configuration. Nothing here is downloaded."""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Idefics2Config, Idefics2ForConditionalGeneration, Idefics2ImageProcessorPil, Idefics2Processor
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"]
IMAGE_SIZE = 64  # the vision tower's input side; the processor resizes every image to fit it
N_LATENTS = 8  # image tokens per image: the perceiver's latents

# Idefics2's own chat template (as published with HuggingFaceM4/idefics2-8b).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Architecture of the shipped model (see the model card in tiny/model/README.md).
ARCHITECTURE = dict(
    vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                image_size=IMAGE_SIZE, patch_size=8),
    perceiver=dict(hidden_size=128, rms_norm_eps=1e-6, resampler_n_latents=N_LATENTS, resampler_depth=1, resampler_n_heads=4, resampler_head_dim=32,
                   num_key_value_heads=2),
    text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512),
)


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the course's own strings; any text still encodes (byte fallback)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    # Like Idefics2's Mistral tokenizer: every encoded text starts with <s>.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        model_max_length=512, padding_side="left",
    )


def build_processor(tokenizer: PreTrainedTokenizerFast) -> Idefics2Processor:
    """The real Idefics2 processor; image splitting off (a 64-pixel tower has nothing to gain from crops)."""
    image_processor = Idefics2ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": IMAGE_SIZE, "shortest_edge": IMAGE_SIZE},
    )
    return Idefics2Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=N_LATENTS,
                             chat_template=CHAT_TEMPLATE)


def build_config(tokenizer: PreTrainedTokenizerFast, architecture: dict = ARCHITECTURE) -> Idefics2Config:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(model_type="mistral", vocab_size=len(tokenizer), pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
                eos_token_id=ids["</s>"], tie_word_embeddings=False, sliding_window=None, **architecture["text"])
    return Idefics2Config(
        vision_config=dict(architecture["vision"]), perceiver_config=dict(architecture["perceiver"]), text_config=text,
        image_token_id=ids["<image>"], tie_word_embeddings=False, use_cache=True,
    )


def build_model(config: Idefics2Config, seed: int = 0) -> Idefics2ForConditionalGeneration:
    torch.manual_seed(seed)
    model = Idefics2ForConditionalGeneration(config)
    # Idefics2 starts its perceiver latents all equal to one: identical latents learn slowly. Spread them.
    with torch.no_grad():
        latents = model.model.connector.perceiver_resampler.latents
        latents.copy_(torch.randn_like(latents))
        # Start the vision tower knowing where each patch is (row and column as sines and cosines), so
        # "at the top" and "at the bottom" need not be discovered from scratch. Still learnt afterwards.
        positions = model.model.vision_model.embeddings.position_embedding.weight
        positions.copy_(grid_sincos(positions.shape[0], positions.shape[1]) * 0.1)  # ~ the patch embeddings' scale
    eos = [config.text_config.eos_token_id, _token_id(config, "<end_of_utterance>")]
    model.generation_config.eos_token_id = eos  # generation stops at <end_of_utterance>
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.bos_token_id = config.text_config.bos_token_id
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 64
    return model


def grid_sincos(n_positions: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine embeddings for a square grid of patches in row-major order, scaled to unit std."""
    side = int(n_positions ** 0.5)
    quarter = dim // 4
    freq = 1.0 / (100.0 ** (torch.arange(quarter) / quarter))
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    parts = []
    for coord in (rows.flatten(), cols.flatten()):
        angle = coord[:, None].float() * freq[None, :]
        parts += [angle.sin(), angle.cos()]
    table = torch.cat(parts, dim=1)
    return table / table.std()


def _token_id(config: Idefics2Config, token: str) -> int:
    # <end_of_utterance> comes right after <image> in SPECIAL_TOKENS, so its id follows the image token's.
    return config.image_token_id + SPECIAL_TOKENS.index(token) - SPECIAL_TOKENS.index("<image>")


def tokenizer_corpus(n: int = 4000, seed: int = 12345) -> list[str]:
    """Texts the tokenizer is trained on: rendered conversations from every question family."""
    from ..shapes.questions import FAMILIES, make_sample

    rng = random.Random(seed)
    texts = []
    for i in range(n):
        sample = make_sample(list(FAMILIES)[i % len(FAMILIES)], rng)
        # the text the chat template renders around each turn, so "User:" and "Assistant:" get merged too
        texts.extend(f"\n{m['role'].capitalize()}: " + " ".join(p["text"] for p in m["content"] if p["type"] == "text")
                     for m in sample.messages)
    return texts
