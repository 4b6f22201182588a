"""Build the tiny BLIP-2: a byte-level BPE tokenizer, the real `Blip2Processor`, and a small
`Blip2ForConditionalGeneration` configuration (vision tower, Q-Former, OPT). Nothing is downloaded."""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, PreTrainedTokenizerFast

from ..tiny.build import grid_sincos

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
IMAGE_SIZE = 64  # the vision tower's input side; the processor resizes every image to it
N_QUERIES = 8  # image tokens per image: the Q-Former's learned queries (blip2-opt-2.7b has 32)

# Architecture of the shipped model (see the model card in tiny_blip2/model/README.md).
ARCHITECTURE = dict(
    vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                image_size=IMAGE_SIZE, patch_size=8, initializer_range=0.02),
    qformer=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 cross_attention_frequency=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    text=dict(hidden_size=128, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=128,
              max_position_embeddings=128, dropout=0.0, attention_dropout=0.0),
    num_query_tokens=N_QUERIES,
)


def train_tokenizer(texts: list[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the course's own strings; any text still encodes (byte fallback).
    Like OPT's tokenizer it puts a start token before every text, and BLIP-2's processor puts the
    image tokens before that."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<image>"], model_max_length=128, padding_side="left",
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, num_query_tokens: int = N_QUERIES) -> Blip2Processor:
    """The real BLIP-2 processor: resize to the tower's square, CLIP normalisation, query tokens first."""
    from transformers import BlipImageProcessorPil  # the PIL variant: no torchvision here (FINDINGS.md)

    image_processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=num_query_tokens)


def build_config(tokenizer: PreTrainedTokenizerFast, architecture: dict = ARCHITECTURE) -> Blip2Config:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(model_type="opt", vocab_size=len(tokenizer), pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
                eos_token_id=ids["</s>"], **architecture["text"])
    return Blip2Config(vision_config=dict(architecture["vision"]), qformer_config=dict(architecture["qformer"]),
                       text_config=text, num_query_tokens=architecture["num_query_tokens"],
                       image_token_index=ids["<image>"])


def build_model(config: Blip2Config, seed: int = 0) -> Blip2ForConditionalGeneration:
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        # BLIP-2 starts its query tokens at zero: identical queries stay identical. Spread them.
        model.query_tokens.copy_(torch.randn_like(model.query_tokens) * 0.5)
        # Start the tower knowing where each patch is (rows and columns as sines and cosines); the class
        # token's position stays random. Still learnt afterwards.
        positions = model.vision_model.embeddings.position_embedding[0]
        positions[1:].copy_(grid_sincos(positions.shape[0] - 1, positions.shape[1]) * 0.1)
    gen = model.generation_config
    gen.eos_token_id = config.text_config.eos_token_id
    gen.pad_token_id = config.text_config.pad_token_id
    gen.bos_token_id = config.text_config.bos_token_id
    gen.do_sample = False
    gen.max_new_tokens = 32
    return model


def tokenizer_corpus(n: int = 3000, seed: int = 12345) -> list[str]:
    """Texts the tokenizer is trained on: captions and prompted questions with their answers."""
    from .tasks import TASKS, make_task

    rng = random.Random(seed)
    return [make_task(list(TASKS)[i % len(TASKS)], rng).text for i in range(n)]
