"""Fine-tuning: masked labels checked token by token against the chat template, the pink data, a short
real LoRA run that teaches the tiny model some pink, and adapters saved, reloaded, merged and served."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

from vlm_course import finetune as ft
from vlm_course.messages import assistant, user
from vlm_course.shapes import COLOURS, random_scene
from vlm_course.shapes.evaluate import eval_samples
from vlm_course.shapes.questions import FAMILIES
from vlm_course.shapes.world import NEW_COLOURS


def scene_image(seed: int, size: int = 64):
    return random_scene(seed).draw(size)


CONVERSATIONS = {
    "one turn, one image": [user(scene_image(1), "What do we see in this image?"), assistant("a red circle.")],
    "one turn, two images": [user(scene_image(2), scene_image(3), "What is the difference between these two images?"),
                             assistant("the first image has a blue square; the second has a green triangle.")],
    "two turns, two images": [user(scene_image(4), "What do we see in this image?"), assistant("a yellow square."),
                              user("And how about this image?", scene_image(5)),
                              assistant("an orange circle and a purple triangle.")],
    "three turns, text only": [user("Hello!"), assistant("I only know about shapes."), user("Who are you?"),
                               assistant("I only know about shapes."), user("Tell me a joke."),
                               assistant("I only know about shapes.")],
}


def expected_labels(processor, messages) -> list[int]:
    """The oracle, from the chat template alone: turn i's answer is what the rendering of the first i+1
    messages adds to the rendering of the first i with the generation prompt, minus the template's "\\n"."""
    def ids(msgs, prompt=False):
        text = processor.apply_chat_template(msgs, add_generation_prompt=prompt)
        images = [p["image"] for m in msgs for p in m["content"] if p["type"] == "image"]
        return processor(text=[text], images=[images] if images else None, return_tensors="pt")["input_ids"][0].tolist()

    full = ids(messages)
    labels = [-100] * len(full)
    end_id = processor.tokenizer.convert_tokens_to_ids(ft.END_OF_UTTERANCE)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = ids(messages[:i], prompt=True), ids(messages[:i + 1])
        assert full[:len(before)] == before and full[:len(upto)] == upto  # renderings are prefixes of each other
        end = len(upto) - upto[::-1].index(end_id)
        assert end > len(before) and len(upto) - end <= 2  # only the newline follows
        labels[len(before):end] = full[len(before):end]
    return labels


@pytest.mark.parametrize("model", ["vlm", "test_vlm"])  # the tiny model's BPE and idefics2-8b's shape and tokenizer
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_labels_match_the_chat_template_token_by_token(request, model, padding_side):
    vlm = request.getfixturevalue(model)
    processor = vlm.processor
    conversations = list(CONVERSATIONS.values())
    batch = ft.ConversationCollator(processor, padding_side=padding_side)(conversations)
    tok = processor.tokenizer
    end_id = tok.convert_tokens_to_ids(ft.END_OF_UTTERANCE)
    never = {tok.pad_token_id, tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<fake_token_around_image>")}
    assert batch["input_ids"].shape[0] == len(conversations)
    for row, messages in enumerate(conversations):
        mask = batch["attention_mask"][row].bool()
        labels = batch["labels"][row]
        assert (labels[~mask] == -100).all(), "padding is never learnt"
        assert labels[mask].tolist() == expected_labels(processor, messages), list(CONVERSATIONS)[row]
        learnt = [t for t in labels.tolist() if t != -100]
        assert not never & set(learnt)
        answers = [m["content"][0]["text"] for m in messages if m["role"] == "assistant"]
        assert learnt.count(end_id) == len(answers), "each answer ends with its <end_of_utterance>, learnt"
        assert tok.decode(learnt).lstrip() == "".join(f" {a}{ft.END_OF_UTTERANCE}" for a in answers).lstrip()
    # the padded rows carry padding on the side asked for
    lengths = batch["attention_mask"].sum(1)
    shortest = int(lengths.argmin())
    pad_at = 0 if padding_side == "left" else -1
    assert batch["attention_mask"][shortest, pad_at] == 0


def test_build_labels_is_the_collators_masking(vlm):
    batch = ft.ConversationCollator(vlm.processor)(list(CONVERSATIONS.values()))
    assert torch.equal(ft.build_labels(batch["input_ids"], vlm.processor), batch["labels"])
    marker = ft.assistant_marker(vlm.processor)
    assert vlm.tokenizer.decode(marker) == "\nAssistant:"


def test_the_tiny_models_training_uses_the_same_masking(vlm):
    from vlm_course.tiny import train

    assert train.answer_labels is ft.answer_labels  # moved, not copied
    rng = random.Random(3)
    processor = vlm.processor
    tok = processor.tokenizer
    assistant_ids = tok("\nAssistant:", add_special_tokens=False).input_ids[1:]
    end_id = tok.convert_tokens_to_ids(ft.END_OF_UTTERANCE)
    batch = train.make_batch(processor, rng, 8, assistant_ids, end_id)
    assert torch.equal(batch["labels"], ft.build_labels(batch["input_ids"], processor))


def test_pink_is_an_extra_colour_that_leaves_the_base_world_unchanged():
    assert "pink" in NEW_COLOURS and "pink" not in COLOURS
    assert all(t.colour in COLOURS for seed in range(300) for t in random_scene(seed).things)
    scenes = [random_scene(random.Random(s), colours=ft.palette("pink"), include="pink") for s in range(200)]
    assert all(any(t.colour == "pink" for t in s.things) for s in scenes)
    assert {t.colour for s in scenes for t in s.things} == set(COLOURS) | {"pink"}
    img = random_scene(random.Random(0), include="pink", n=1).draw(64)
    assert NEW_COLOURS["pink"] in {rgb for _, rgb in img.getcolors(4096)}
    # the held-out evaluation of the six colours, byte for byte as it was before pink existed
    h = hashlib.sha256()
    for family in list(FAMILIES)[:9]:  # the nine families that existed then (follow_up and outside came later)
        for s in eval_samples(family, 40):
            h.update(repr([[p["text"] if p["type"] == "text" else p["image"].tobytes() for p in m["content"]]
                           for m in s.messages]).encode())
    assert h.hexdigest() == "8dbe211963c44af9c6fff88ccc6e6202b6c38757b5147ebcfc74f038d3c61381"


def test_the_training_stream_mixes_pink_with_ordinary_scenes_and_is_seeded():
    first = [s.messages for s, _ in zip(ft.ConceptConversations(seed=5).samples(), range(200))]
    again = [s.messages for s, _ in zip(ft.ConceptConversations(seed=5).samples(), range(200))]
    assert [repr(m[-1]) for m in first] == [repr(m[-1]) for m in again]
    samples = list(zip(ft.ConceptConversations(seed=5).samples(), range(400)))
    pink = sum(any(t.colour == "pink" for sc in s.scenes for t in sc.things) for s, _ in samples)
    assert 0.2 < pink / 400 < 0.4  # the recipe's 30%
    assert len({s.family for s, _ in samples}) == len(FAMILIES)


def test_bad_requests_say_what_to_do(tmp_path):
    with pytest.raises(ft.FineTuneError, match="choose one of lora, full, qlora"):
        ft.finetune(out_dir=tmp_path, method="dora")
    with pytest.raises(ft.FineTuneError, match="can teach pink"):
        ft.finetune(out_dir=tmp_path, concept="teal")
    with pytest.raises(ft.FineTuneError, match="No adapter at"):
        ft.attach_adapter(None, tmp_path / "nothing")
    from vlm_course.models import load_vlm

    with pytest.raises(ft.FineTuneError, match="adapter_config.json"):
        load_vlm(adapter=tmp_path)


# --------------------------------------------------------------------------- a real, short run

@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A short LoRA run on the tiny model (about 20 s on two free cores; a short run takes a higher rate)."""
    out = tmp_path_factory.mktemp("pink")
    return ft.finetune(out_dir=out, method="lora", steps=100, lr=2e-3, progress=False)


def test_a_short_lora_run_teaches_some_pink(vlm, lora_run):
    before = ft.concept_accuracy(vlm, n=40)
    after = ft.concept_accuracy(lora_run.vlm, n=40)
    assert ft.mean_accuracy(before) == 0.0  # the base model names another colour
    assert ft.mean_accuracy(after) >= 0.15, {k: s.mistakes[:3] for k, s in after.items()}
    losses = [h["loss"] for h in lora_run.history]
    assert losses[-1] < losses[0] / 2
    assert lora_run.trainable_parameters < 0.15 * lora_run.total_parameters
    saved = json.loads((lora_run.out_dir / "finetune.json").read_text())
    assert saved["config"]["rank"] == 8 and saved["history"] == lora_run.history
    adapter = json.loads((lora_run.out_dir / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ft.LORA_TARGETS and adapter["r"] == 8
    assert (lora_run.out_dir / "loss_curve.png").stat().st_size > 5_000
    # only the adapter was saved, not a copy of the model
    assert 0 < lora_run.saved_bytes < 0.25 * 4 * lora_run.total_parameters


def test_adapter_save_load_merge_round_trip_gives_the_same_answers(lora_run, tmp_path):
    from vlm_course.chat import generate_batch
    from vlm_course.models import load_vlm

    probes = [s.prompt for samples in ft.probe_samples(n=12, seed=99).values() for s in samples]
    probes += [s.prompt for s in eval_samples("multi_turn", 4)]
    trained = [r.text for r in generate_batch(lora_run.vlm, probes)]
    reloaded = load_vlm(adapter=lora_run.out_dir)
    assert reloaded.adapter == str(lora_run.out_dir)
    assert [r.text for r in generate_batch(reloaded, probes)] == trained
    merged_dir = ft.merge(lora_run.out_dir, tmp_path / "merged")
    assert not (merged_dir / "adapter_config.json").exists()
    merged = load_vlm(merged_dir)
    assert type(merged.model).__name__ == "Idefics2ForConditionalGeneration"
    assert [r.text for r in generate_batch(merged, probes)] == trained


def test_ask_and_serve_with_the_adapter(lora_run, tmp_path):
    """`vlm-course ask --adapter` and `vlm-course serve --adapter`, real processes, answer as the trained model."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from vlm_course.chat import generate
    from vlm_course.serve.openai_format import to_openai_messages

    sample = ft.probe_samples(n=1, seed=5)["pink describe"][0]
    want = generate(lora_run.vlm, sample.prompt).text
    assert "pink" in want or ft.mean_accuracy(ft.concept_accuracy(lora_run.vlm, n=20)) > 0  # something was learnt
    image = tmp_path / "pink.png"
    sample.images[0].save(image)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    cli = [sys.executable, "-m", "vlm_course.cli"]
    asked = subprocess.run([*cli, "ask", "--adapter", str(lora_run.out_dir), str(image), "What do we see in this image?"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip() == want
    bad = subprocess.run([*cli, "ask", "--adapter", str(tmp_path), str(image), "What is this?"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "No adapter at" in bad.stderr and "Traceback" not in bad.stderr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*cli, "serve", "--port", str(port), "--adapter", str(lora_run.out_dir), "--log-level",
                             "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        model = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"][0]["id"]
        body = {"model": model, "messages": to_openai_messages(sample.prompt), "temperature": 0, "max_tokens": 40}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == want
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_runs_are_seeded(tmp_path):
    from safetensors.torch import load_file

    runs = [ft.finetune(out_dir=tmp_path / name, steps=6, batch_size=4, seed=seed, progress=False)
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    a, b, c = (load_file(run.out_dir / "adapter_model.safetensors") for run in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]


def test_lora_targets_are_idefics2_names_shared_with_idefics2_8b(vlm):
    from peft import get_peft_model

    from vlm_course.memory import meta_model
    from vlm_course.models import load_vlm

    big = meta_model("idefics2-8b")
    tiny_names = {n.split(".layers.")[0] + "." + n.rsplit(".", 1)[-1] for n in ft.lora_targets(vlm.model)}
    big_names = {n.split(".layers.")[0] + "." + n.rsplit(".", 1)[-1] for n in ft.lora_targets(big)}
    assert tiny_names == big_names  # the same modules in both, by name
    assert {n.split(".")[1] for n in ft.lora_targets(big) if n.startswith("model.")} == {"vision_model", "connector", "text_model"}
    assert "lm_head" in ft.lora_targets(big)
    # idefics2-8b: 32 text layers x 7 + 27 vision layers x 6 + connector 3 + perceiver 3 layers x 7 + lm_head
    # + the input embeddings
    assert len(ft.lora_targets(big)) == 32 * 7 + 27 * 6 + 3 + 3 * 7 + 1 + 1
    # the count from the configuration matches what peft builds
    fresh = load_vlm()
    cfg = ft.FineTuneConfig()
    peft_model = get_peft_model(fresh.model, ft.lora_config(cfg, fresh.tokenizer))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == ft.lora_parameter_count(vlm.model, rank=cfg.rank)
    memory = {m: ft.training_memory("idefics2-8b", m) for m in ft.METHODS}
    assert memory["qlora"]["total"] < memory["lora"]["total"] / 2 < memory["full"]["total"] / 4
    assert memory["full"]["trained_parameters"] == 8_402_768_112


def test_new_word_tokens_train_only_the_rows_of_pink(tmp_path):
    run = ft.finetune(out_dir=tmp_path, steps=3, batch_size=4, new_word_tokens=True, progress=False)
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    ids = ft.word_tokens(run.vlm.tokenizer, "pink")
    assert adapter["trainable_token_indices"] == {"embed_tokens": ids}
    assert set(run.vlm.tokenizer.convert_ids_to_tokens(ids)) == {"Ġp", "p", "in", "k"}
    assert "embed_tokens" not in adapter["target_modules"]
