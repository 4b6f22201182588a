"""Fine-tune a vision-language model: masked labels, a new concept's data, LoRA / full / QLoRA, adapters.

    labels = build_labels(batch["input_ids"], processor)          # only the assistant's answers learn
    run = finetune(method="lora", out_dir="runs/pink")           # teach the tiny model pink, save an adapter
    vlm = load_vlm(adapter="runs/pink")                            # the base model with the adapter on
    merge("runs/pink", "runs/pink-merged")                        # a plain model directory, no peft needed

The training loop is the transformers `Trainer` (progress bar, seeded, AdamW); LoRA and QLoRA are
peft's; QLoRA loads the frozen base in bitsandbytes 4-bit. Nothing here forks on tiny vs idefics2-8b:
the LoRA targets are Idefics2's own module names, which the 8B model shares.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .errors import VLMCourseError
from .plots import save_loss_curve
from .quiet import short_bars
from .shapes.questions import Sample, make_sample, render_training
from .shapes.world import COLOURS, NEW_COLOURS

IGNORE = -100  # the label the loss skips
END_OF_UTTERANCE = "<end_of_utterance>"
METHODS = ("lora", "full", "qlora")
CONCEPTS = tuple(NEW_COLOURS)  # colours the base model has never seen
# Idefics2's projections, in all three parts (vision tower, connector, language model), by the names
# HuggingFaceM4/idefics2-8b uses too; plus the output head and the input embeddings, because the new word is
# written and read with tokens the model never produced (" p", "in", "k"). Training only those tokens' rows of
# the embedding instead (FineTuneConfig.new_word_tokens) forgot as little but learnt less: 78.5% on the pink
# descriptions against 99% (1,000 steps each).
PROJECTIONS = (r".*\.(vision_model|connector|text_model)\..*\.(q_proj|k_proj|v_proj|o_proj|out_proj|fc1|fc2"
               r"|gate_proj|up_proj|down_proj)|lm_head")
EMBEDDINGS = r".*\.text_model\.embed_tokens"
LORA_TARGETS = f"{PROJECTIONS}|{EMBEDDINGS}"


class FineTuneError(VLMCourseError, ValueError):
    """A fine-tuning request that cannot work: unknown method or concept, a directory with no adapter."""


# --------------------------------------------------------------------------- labels

def answer_labels(input_ids: torch.Tensor, assistant_ids: list[int], end_id: int) -> torch.Tensor:
    """-100 everywhere except the assistant's answers and the <end_of_utterance> closing each one.

    An answer starts after `assistant_ids` (the tokens of "\\nAssistant:" as the template writes them) and
    runs to its <end_of_utterance>, included: the model must learn to stop. Padding on either side, the
    prompt, the user's turns, <image> and <fake_token_around_image> are never inside such a span."""
    labels = torch.full_like(input_ids, IGNORE)
    k = len(assistant_ids)
    for row, ids in enumerate(input_ids.tolist()):
        i = 0
        while i <= len(ids) - k:
            if ids[i:i + k] == assistant_ids:
                j = i + k
                while j < len(ids) and ids[j] != end_id:
                    j += 1
                labels[row, i + k:j + 1] = input_ids[row, i + k:j + 1]
                i = j
            i += 1
    return labels


def assistant_marker(processor) -> list[int]:
    """The token ids that open an assistant turn, as they appear inside a rendered conversation.

    Read from the chat template itself (a one-turn prompt with the generation prompt, the tokens after
    its last <end_of_utterance>), so any Idefics2 tokenizer gives its own: the tiny model's byte-level
    BPE and idefics2-8b's sentencepiece split "\\nAssistant:" differently."""
    tokenizer = getattr(processor, "tokenizer", processor)
    probe = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    prompt = processor.apply_chat_template(probe, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    end_id = tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)
    if end_id not in ids:
        raise FineTuneError(f"The chat template does not close a turn with {END_OF_UTTERANCE}: {prompt!r}. "
                            "build_labels needs Idefics2's template.")
    last = len(ids) - 1 - ids[::-1].index(end_id)
    return ids[last + 1:]


def build_labels(input_ids: torch.Tensor, processor) -> torch.Tensor:
    """Labels for a batch of rendered conversations: the assistant's tokens and their <end_of_utterance>
    are learnt, everything else (prompt, user turns, image and fake tokens, padding) is -100."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return answer_labels(input_ids, assistant_marker(processor), tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE))


def show_labels(processor, input_ids, **labels) -> str:
    """A table of the tokens of one row and, for each named labelling, whether the token is learnt ("x")
    or masked ("."); runs of the same token (64 <image>, padding) are folded into one line."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = [int(i) for i in input_ids]
    columns = {name: [int(x) != IGNORE for x in row] for name, row in labels.items()}
    tokens = tokenizer.convert_ids_to_tokens(ids)
    lines = [f"{'pos':>4}  {'token':<28}" + "".join(f"{name:>14}" for name in columns)]
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[i] and all(c[j + 1] == c[i] for c in columns.values()):
            j += 1
        shown = repr(tokens[i])[1:-1] + (f" x {j - i + 1}" if j > i else "")
        lines.append(f"{i:>4}  {shown:<28}" + "".join(f"{'learnt' if c[i] else '.':>14}" for c in columns.values()))
        i = j + 1
    return "\n".join(lines)


class ConversationCollator:
    """Conversations (each ending with the assistant's answer) to a padded batch with masked labels."""

    def __init__(self, processor, padding_side: str = "right"):
        self.processor, self.padding_side = processor, padding_side
        self.marker = assistant_marker(processor)
        self.end_id = processor.tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)

    def __call__(self, items) -> dict:
        conversations = [item["messages"] if isinstance(item, dict) else item for item in items]
        texts = [self.processor.apply_chat_template(c) for c in conversations]
        images = [[p["image"] for m in c for p in m["content"] if p["type"] == "image"] for c in conversations]
        kwargs = dict(text=texts, return_tensors="pt", padding=True, padding_side=self.padding_side)
        if any(images):
            kwargs["images"] = images
        batch = self.processor(**kwargs)
        batch["labels"] = answer_labels(batch["input_ids"], self.marker, self.end_id)
        return batch


# --------------------------------------------------------------------------- data

def palette(concept: str) -> tuple[str, ...]:
    """The six colours of the base world and the new one."""
    if concept not in CONCEPTS:
        raise FineTuneError(f"Unknown concept {concept!r}: the shapes world can teach {', '.join(CONCEPTS)}.")
    return (*COLOURS, concept)


def concept_sample(family: str, rng: random.Random, concept: str = "pink", render=render_training) -> Sample:
    """A question of `family` about a scene (or two) in which at least one object has the new colour."""
    return make_sample(family, rng, render, colours=palette(concept), include=concept)


# How often each family is drawn: the base model's polishing mix (tiny.train.POLISH_WEIGHTS) leaning further on
# what forgets first (attribute questions about two objects of one shape or colour), with more questions from
# outside the world, whose held-out wordings the tuned model otherwise stops recognising (measured: with the
# base model's own training mix, attribute fell 5-10 points and outside-the-world 6-11).
FINETUNE_WEIGHTS = {"describe": 1.0, "attribute": 6.0, "count": 1.5, "exists": 1.0, "position": 1.5,
                    "two_images": 2.0, "multi_turn": 0.8, "description": 1.0, "unknown": 1.0,
                    "follow_up": 1.0, "outside": 0.5}


class ConceptConversations(torch.utils.data.IterableDataset):
    """An endless, seeded stream of training conversations: a share `concept_share` about scenes with the
    new colour, the rest ordinary scenes of the base model's world (what keeps it from forgetting).
    Every question family of the base model, weighted by `weights` (default FINETUNE_WEIGHTS)."""

    def __init__(self, concept: str = "pink", seed: int = 0, concept_share: float = 0.3,
                 weights: dict | None = None):
        palette(concept)
        self.concept, self.seed, self.concept_share = concept, seed, concept_share
        self.families, self.weights = zip(*(weights or FINETUNE_WEIGHTS).items())

    def samples(self):
        worker = torch.utils.data.get_worker_info()
        rng = random.Random(3_000_017 + self.seed * 7_919 + (worker.id * 104_729 if worker else 0))  # far from eval seeds
        while True:
            family = rng.choices(self.families, self.weights)[0]
            if rng.random() < self.concept_share:
                yield concept_sample(family, rng, self.concept)
            else:
                yield make_sample(family, rng, render_training)

    def __iter__(self):
        for sample in self.samples():
            yield {"messages": sample.messages}


# --------------------------------------------------------------------------- measuring

def probe_samples(concept: str = "pink", n: int = 100, seed: int = 7) -> dict[str, list[Sample]]:
    """Held-out scenes with the new colour and the lesson's two questions: "What do we see in this image?"
    and "What colour is the <shape>?" asked of a shape that has the new colour."""
    from .messages import assistant, user
    from .shapes.questions import render_clean
    from .shapes.world import join_names, random_scene

    colours = palette(concept)
    rng = random.Random(f"probe-{concept}-{seed}")
    describe, colour = [], []
    for _ in range(n):
        s = random_scene(rng, colours=colours, include=concept)
        describe.append(Sample("describe", [user(render_clean(s, rng), "What do we see in this image?"),
                                            assistant(s.describe())], s.describe(), [s]))
        s = random_scene(rng, colours=colours, include=concept)
        shape = rng.choice([t.shape for t in s.things if t.colour == concept])
        a = join_names([t.colour for t in s.things if t.shape == shape]) + "."
        colour.append(Sample("colour", [user(render_clean(s, rng), f"What colour is the {shape}?"), assistant(a)],
                             a, [s]))
    return {f"{concept} describe": describe, f"{concept} colour": colour}


def concept_accuracy(vlm, concept: str = "pink", n: int = 100, seed: int = 7, batch_size: int = 50) -> dict:
    """Exact match on the held-out probes of the new colour: {probe name: FamilyScore}."""
    from .shapes.evaluate import score_samples

    return {name: score_samples(vlm, name, samples, batch_size) for name, samples in probe_samples(concept, n, seed).items()}


def mean_accuracy(scores: dict) -> float:
    correct, total = sum(s.correct for s in scores.values()), sum(s.total for s in scores.values())
    return correct / total if total else 0.0


# --------------------------------------------------------------------------- training

@dataclass
class FineTuneConfig:
    method: str = "lora"
    concept: str = "pink"
    steps: int = 1_000
    batch_size: int = 16
    lr: float | None = None  # None: the method's default (LR)
    warmup: int = 20
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: str = LORA_TARGETS
    new_word_tokens: bool = False  # instead of LoRA on the embeddings, train the new word's rows only (trainable tokens)
    concept_share: float = 0.3  # of the conversations, those about scenes with the new colour
    family_weights: dict | None = None  # None: FINETUNE_WEIGHTS
    seed: int = 0
    threads: int | None = 1  # torch threads: the tiny model is too small for a second to help, and on a busy CPU it hurts
    workers: int = 0  # DataLoader processes drawing the scenes (0: drawn between steps)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory (an 8B model)
    logging_steps: int = 5


# Peak learning rates: LoRA's small matrices take a large step; full fine-tuning a gentle one.
LR = {"lora": 7e-4, "qlora": 7e-4, "full": 2e-4}


@dataclass
class FineTuneRun:
    out_dir: Path
    config: FineTuneConfig
    seconds: float  # wall clock of the training loop
    cpu_seconds: float  # CPU time this process got meanwhile: on a shared machine, far less than seconds x threads
    trainable_parameters: int
    total_parameters: int
    saved_bytes: int  # the adapter's file (LoRA, QLoRA) or the whole model's (full fine-tuning)
    peak_bytes: int | None
    peak_kind: str
    history: list[dict] = field(default_factory=list, repr=False)
    vlm: Any = field(default=None, repr=False)  # the trained model, ready to answer (not saved)

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "vlm"}
        d["out_dir"], d["config"] = str(self.out_dir), asdict(self.config)
        return d


def word_tokens(tokenizer, word: str) -> list[int]:
    """The token ids `word` is written with, inside a sentence and at its start (" pink" and "pink")."""
    return sorted({i for text in (f" {word}", word) for i in tokenizer(text, add_special_tokens=False).input_ids})


def lora_config(cfg: FineTuneConfig, tokenizer=None):
    from peft import LoraConfig

    targets, tokens = cfg.targets, None
    if cfg.new_word_tokens:  # the embedding's new-word rows are trained as they are, not through LoRA
        targets = targets.replace(f"|{EMBEDDINGS}", "")
        tokens = {"embed_tokens": word_tokens(tokenizer, cfg.concept)}
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      init_lora_weights="gaussian", bias="none", trainable_token_indices=tokens)


def lora_targets(model, targets: str = LORA_TARGETS) -> list[str]:
    """The names of the modules the LoRA target pattern picks (peft matches the whole name, re.fullmatch)."""
    import re

    return [name for name, m in model.named_modules()
            if re.fullmatch(targets, name) and isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]


def lora_parameter_count(model, rank: int = 8, targets: str = LORA_TARGETS) -> int:
    """Trainable parameters LoRA of `rank` adds to `model` (any device, the meta device included):
    rank x (inputs + outputs) for each targeted Linear, rank x (vocabulary + width) for an Embedding."""
    total = 0
    modules = dict(model.named_modules())
    for name in lora_targets(model, targets):
        m = modules[name]
        total += rank * ((m.in_features + m.out_features) if isinstance(m, torch.nn.Linear)
                         else (m.num_embeddings + m.embedding_dim))
    return total


def training_memory(config="idefics2-8b", method: str = "qlora", rank: int = 8, dtype="bfloat16") -> dict:
    """What training needs to hold besides activations, from the configuration alone (the meta device):
    the frozen or trained weights, the trained parameters' gradients and AdamW's two float32 moments each.
    Activations grow with batch size and sequence length and come on top."""
    from .memory import estimate, meta_model

    if method not in METHODS:
        raise FineTuneError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    weights = estimate(config, dtype=dtype, quant="bnb-4bit" if method == "qlora" else None)
    width = 2 if str(dtype).endswith(("bfloat16", "float16")) else 4
    if method == "full":
        trained = weights.parameters
        extra = 0
    else:
        trained = lora_parameter_count(meta_model(config), rank)
        extra = trained * width  # the LoRA matrices themselves
    parts = {"weights": weights.bytes + extra, "gradients": trained * width, "optimizer": trained * 8}
    return {"method": method, "trained_parameters": trained, "total_parameters": weights.parameters, **parts,
            "total": sum(parts.values())}


def prepare_model(vlm, cfg: FineTuneConfig):
    """The model to train: peft LoRA on the targets (QLoRA: on a 4-bit base), or every weight (full)."""
    model = vlm.model
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":  # norms in fp32, inputs that require grad: what k-bit training needs
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return get_peft_model(model, lora_config(cfg, vlm.tokenizer))


def load_for(cfg: FineTuneConfig, model_id=None):
    from .models import load_vlm

    if cfg.method not in METHODS:
        raise FineTuneError(f"Unknown method {cfg.method!r}: choose one of {', '.join(METHODS)}.")
    if cfg.method == "qlora":
        return load_vlm(model_id, quant="bnb-4bit", dtype="float32" if _device_type() == "cpu" else "auto")
    return load_vlm(model_id)


def _device_type() -> str:
    from .models import pick_device

    return pick_device().type


def finetune(model_id=None, out_dir: str | os.PathLike = "runs/finetune", cfg: FineTuneConfig | None = None,
             progress: bool = True, vlm=None, **overrides) -> FineTuneRun:
    """Fine-tune `model_id` (default: the tiny model) on the concept's conversations with the Trainer.

    Saves to `out_dir`: the adapter (LoRA, QLoRA: adapter_config.json + adapter_model.safetensors) or the
    whole model (full), the processor, finetune.json (recipe, loss history, time) and loss_curve.png.
    `overrides` replace fields of `cfg` (steps=..., lr=...). `vlm`: train this loaded model instead (its model is
    changed in place: LoRA layers are put into it). The returned run's `vlm` answers with the trained model."""
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from .bench import _peak, _reset_peak

    cfg = cfg or FineTuneConfig()
    cfg = FineTuneConfig(**{**asdict(cfg), **overrides})
    if cfg.method not in METHODS:
        raise FineTuneError(f"Unknown method {cfg.method!r}: choose one of {', '.join(METHODS)}.")
    palette(cfg.concept)
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise FineTuneError(f"steps and batch_size must be at least 1, got {cfg.steps} and {cfg.batch_size}.")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    vlm = vlm or load_for(cfg, model_id)
    baseline = _reset_peak(vlm.device)
    model = prepare_model(vlm, cfg)
    model.train()
    args = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr or LR[cfg.method], lr_scheduler_type="cosine", warmup_steps=cfg.warmup,
        weight_decay=0.0, max_grad_norm=1.0, logging_steps=cfg.logging_steps, save_strategy="no", report_to=[],
        seed=cfg.seed, data_seed=cfg.seed, use_cpu=vlm.device.type == "cpu", dataloader_num_workers=cfg.workers,
        remove_unused_columns=False, disable_tqdm=not progress, activation_checkpointing=cfg.gradient_checkpointing,
        bf16=vlm.device.type == "cuda" and vlm.dtype == torch.bfloat16,  # mixed precision where the weights are bf16
    )
    data = ConceptConversations(cfg.concept, cfg.seed, cfg.concept_share, cfg.family_weights)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=ConversationCollator(vlm.processor))
    if not progress:  # without a progress bar the Trainer prints every log line instead: keep quiet
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the Trainer's notes about CPU and logging, not the progress bar
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        trainer.train()
    finally:
        hf_logging.set_verbosity(verbosity)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _peak(vlm.device)
    model.eval()
    shutil.rmtree(out / "trainer", ignore_errors=True)  # the Trainer's working folder; nothing is checkpointed
    history = [{"step": h["step"], "loss": h["loss"], "lr": h.get("learning_rate")}
               for h in trainer.state.log_history if "loss" in h]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    with short_bars():  # no "Writing model shards" bar for a save under a second
        if cfg.method == "full":
            model.save_pretrained(out)
        else:  # the embeddings' trained rows are in the adapter: no copy of the whole vocabulary
            model.save_pretrained(out, save_embedding_layers=False)
    vlm.processor.save_pretrained(out)
    saved = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    vlm.model = model
    run = FineTuneRun(out, cfg, seconds, cpu_seconds, trainable, total, saved, None if peak is None else peak - baseline,
                      "cuda max_memory_allocated" if vlm.device.type == "cuda" else "peak RSS rise (in-process)",
                      history, vlm)
    (out / "finetune.json").write_text(json.dumps(run.as_dict(), indent=1))
    save_loss_curve(history, out / "loss_curve.png", f"{cfg.method}: teaching the model {cfg.concept}")
    return run


# --------------------------------------------------------------------------- adapters

def is_adapter(directory) -> bool:
    return (Path(directory) / "adapter_config.json").is_file()


def attach_adapter(model, adapter_dir):
    """The model with the peft adapter saved in `adapter_dir` on it (a PeftModel, not merged)."""
    from peft import PeftModel

    path = Path(adapter_dir).expanduser()
    if not is_adapter(path):
        raise FineTuneError(f"No adapter at {str(path)!r}: the directory is missing or has no adapter_config.json. "
                            "Give a directory written by `vlm-course finetune --method lora` (or finetune()).")
    model = PeftModel.from_pretrained(model, str(path))
    model.eval()
    return model


def merge(adapter_dir, out_dir, model_id=None) -> Path:
    """Fold the adapter into the base weights and save a plain model directory (no peft to load it)."""
    from .models import load_vlm, save_vlm

    vlm = load_vlm(model_id, adapter=adapter_dir)
    vlm.model = vlm.model.merge_and_unload()
    vlm.adapter = None
    return save_vlm(vlm, out_dir)


# --------------------------------------------------------------------------- reporting

def evaluate_run(run: FineTuneRun, n: int = 100, n_old: int = 0, base_scores: dict | None = None) -> dict:
    """Exact match of the tuned model on `n` held-out probes of the new colour and, if n_old, on `n_old`
    questions of every old family (the standard evaluation); saved into the run's finetune.json."""
    from .shapes.evaluate import evaluate

    result: dict = {"concept": {k: s.accuracy for k, s in concept_accuracy(run.vlm, run.config.concept, n=n).items()}}
    result["concept_mean"] = sum(result["concept"].values()) / len(result["concept"])
    if n_old:
        old = evaluate(run.vlm, n=n_old, batch_size=50, progress=False)
        result["old"] = {family: s.accuracy for family, s in old.items()}
        result["old_mean"] = sum(result["old"].values()) / len(result["old"])
    result["n"], result["n_old"] = n, n_old
    record = json.loads((run.out_dir / "finetune.json").read_text())
    record["evaluation"] = result
    (run.out_dir / "finetune.json").write_text(json.dumps(record, indent=1))
    return result


def report(run: FineTuneRun, n: int = 100, n_old: int = 0) -> str:
    """What a run cost and, on `n` held-out probes per question (and `n_old` per old family), what it taught."""
    from .memory import format_bytes

    cfg = run.config
    lines = [f"{cfg.method}: {cfg.steps} steps of {cfg.batch_size} in {run.seconds:.1f} s ({run.cpu_seconds:.1f} s of CPU); "
             f"{run.trainable_parameters:,} of {run.total_parameters:,} parameters trained; "
             f"saved {format_bytes(run.saved_bytes)} to {run.out_dir}; peak memory +{format_bytes(run.peak_bytes or 0)}"]
    if n:
        result = evaluate_run(run, n, n_old)
        lines += [f"  {name}: {acc:.1%} of {n}" for name, acc in result["concept"].items()]
        if n_old:
            lines.append("  old families (" + str(n_old) + " each): " +
                         ", ".join(f"{f} {a:.1%}" for f, a in result["old"].items()))
    use = f"--adapter {run.out_dir}" if cfg.method != "full" else f"--model {run.out_dir}"
    lines.append(f"ask it: vlm-course ask {use} IMAGE 'What do we see in this image?'")
    if cfg.method != "full":
        lines.append(f"merge it into a plain model directory: vlm_course.finetune.merge({str(run.out_dir)!r}, OUT_DIR)")
    return "\n".join(lines)
