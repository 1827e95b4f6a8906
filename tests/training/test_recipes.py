"""Multi-stage recipes: the smoke recipe runs every stage end to end on generated data, resumes, and the
nano recipe is consistent with its preset."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kvl_core.config import NANO_MERGES, preset
from kvl_core.errors import KvlError
from kvl_core.model import KimiVLForConditionalGeneration
from kvl_core.training import recipes


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe") / "run"
    events = []
    summary = recipes.run(recipes.smoke(), out, on_event=lambda kind, info: events.append((kind, info)))
    return out, summary, events


def test_cli_recipe_evaluates_held_out_sets_and_exports(smoke_run, tmp_path):
    from kvl_cli.commands.train import run_recipe

    out, _, _ = smoke_run
    summary = run_recipe("smoke", str(out), resume=True, export=str(tmp_path / "model"), quiet=True)
    ocr = summary["eval"]["ocr"]["metrics"]
    assert 0 <= ocr["structure"] <= 100 and ocr["cer"] > 50  # two steps of training read nothing yet
    assert summary["eval"]["ocr"]["samples"] == recipes.smoke().heldout["ocr"]
    assert "accuracy" in summary["eval"]["ground"]["metrics"]
    meta = json.loads((tmp_path / "model" / "kvl_model.json").read_text())
    assert meta["recipe"] == "smoke" and meta["eval"] == summary["eval"]
    assert meta["skills"] == ["ocr", "ground"] == list(recipes.smoke().skills)  # what hub.require_skill reads
    assert json.loads((out / "recipe.json").read_text())["eval"] == summary["eval"]


def test_smoke_recipe_chains_every_stage(smoke_run):
    out, summary, events = smoke_run
    names = [st.key for st in recipes.smoke().stages]
    assert list(summary["stages"]) == names == ["read-vit", "read-lm", "read-joint", "read-joint-screens", "vit",
                                                "align", "pretrain", "sft"]
    starts = [info["stage"] for kind, info in events if kind == "start"]
    assert starts == [st.stage for st in recipes.smoke().stages]
    # read-vit trains the vision side only, read-lm the language model only, read-joint both
    rv, rl, rj = (KimiVLForConditionalGeneration.from_pretrained(out / n / "final").state_dict()
                  for n in ("read-vit", "read-lm", "read-joint"))
    lm_w, vis_w = "language_model.model.layers.0.self_attn.o_proj.weight", "vision_tower.encoder.blocks.0.mlp.fc0.weight"
    assert torch.equal(rv[vis_w], rl[vis_w]) and not torch.equal(rv[lm_w], rl[lm_w])
    assert not torch.equal(rl[vis_w], rj[vis_w]) and not torch.equal(rl[lm_w], rj[lm_w])
    assert (out / "read-vit" / "final" / "dense_head.safetensors").exists()
    # each stage starts from the previous stage's output: align's frozen LLM equals vit's LLM bitwise
    vit = KimiVLForConditionalGeneration.from_pretrained(out / "vit" / "final")
    align = KimiVLForConditionalGeneration.from_pretrained(out / "align" / "final")
    sft = KimiVLForConditionalGeneration.from_pretrained(out / "sft" / "final")
    w = "language_model.model.layers.0.self_attn.o_proj.weight"
    sd_vit, sd_align, sd_sft = vit.state_dict(), align.state_dict(), sft.state_dict()
    assert torch.equal(sd_vit[w], sd_align[w])
    assert not torch.equal(sd_align[w], sd_sft[w])
    v = "vision_tower.encoder.blocks.0.mlp.fc0.weight"
    assert not torch.equal(sd_vit[v], sd_align[v])  # align trains the vision side
    log = json.loads((out / "recipe.json").read_text())
    assert all(log["stages"][n]["seconds"] > 0 for n in names)
    for kind in ("ocr", "ground"):
        lines = open(summary["heldout"][kind]).read().splitlines()
        assert len(lines) == recipes.smoke().heldout[kind]


def test_rerun_needs_resume_and_resume_skips_finished_stages(smoke_run):
    out, _, _ = smoke_run
    with pytest.raises(KvlError, match="already holds a run"):
        recipes.run(recipes.smoke(), out)
    events = []
    recipes.run(recipes.smoke(), out, resume=True, on_event=lambda kind, info: events.append(kind))
    assert "start" not in events  # every stage already has final/


def test_nano_recipe_matches_its_preset():
    rec = recipes.nano()
    assert rec.preset == "nano" and rec.merges == NANO_MERGES
    cfg = preset("nano")
    assert cfg.text.bos_token_id == 256 + NANO_MERGES
    assert cfg.media_placeholder_token_id == 256 + NANO_MERGES + 21
    assert [s.key for s in rec.stages] == ["read-vit", "read-lm-lines", "read-lm", "read-joint-lines", "read-joint"]
    assert rec.skills == ("ocr",)  # no stage teaches grounding: the exported model must not claim it
    assert {k.partition(":")[0] for s in rec.stages for k in s.data} <= set(rec.samples)  # every kind is generated
    model = KimiVLForConditionalGeneration(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 3e6 < n < 10e6  # "a few million parameters"; bf16 weights stay far below the 20 MB cap
    assert n * 2 < 20 * 2**20


def test_unknown_recipe_is_named():
    with pytest.raises(KvlError, match="unknown recipe 'big'"):
        recipes.recipe("big")


def test_export_ships_a_loadable_bf16_model_without_trainer_state(smoke_run, tmp_path):
    out, _, _ = smoke_run
    dest = recipes.export(out / "sft" / "final", tmp_path / "kvl-nano", extra={"recipe": "smoke"})
    names = {p.name for p in dest.iterdir()}
    assert {"model.safetensors", "config.json", "tiktoken.model", "tokenizer_config.json",
            "preprocessor_config.json", "generation_config.json", "kvl_model.json"} <= names
    assert "optimizer.pt" not in names and "trainer_state.json" not in names
    from kvl_core.engine import Engine

    engine = Engine.load(dest)
    assert engine.model.dtype == torch.bfloat16
    trained = KimiVLForConditionalGeneration.from_pretrained(out / "sft" / "final").state_dict()
    for name, t in engine.model.state_dict().items():
        assert torch.equal(t, trained[name].to(torch.bfloat16)), name
    reply = engine.chat([{"role": "user", "content": "hi"}], max_new_tokens=3)
    assert reply.completion_tokens <= 3


def test_same_seed_retrains_to_identical_weights(smoke_run, tmp_path):
    """The shipped model's claim: data, tokenizer, init and training are pure functions of the seed."""
    out, _, _ = smoke_run
    again = recipes.run(recipes.smoke(), tmp_path / "again")
    a = KimiVLForConditionalGeneration.from_pretrained(out / "sft" / "final").state_dict()
    b = KimiVLForConditionalGeneration.from_pretrained(again["final"]).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_scale_multiplies_steps_and_training_data_but_not_held_out_sets():
    base, big = recipes.smoke(), recipes.recipe("smoke", 2.5)
    assert [st.steps for st in big.stages] == [round(st.steps * 2.5) for st in base.stages]
    assert big.samples == {k: round(n * 2.5) for k, n in base.samples.items()}
    assert big.heldout == base.heldout and big.merges == base.merges and big.scale == 2.5
    assert [(st.lr, st.batch_tokens) for st in big.stages] == [(st.lr, st.batch_tokens) for st in base.stages]
    assert recipes.recipe("smoke") == base


@pytest.mark.parametrize("bad", [0, -1, float("nan"), 1e6])
def test_absurd_scale_is_refused(bad):
    with pytest.raises(KvlError, match="--scale must be in"):
        recipes.recipe("nano", bad)


def test_resume_refuses_a_run_of_another_scale_or_seed(smoke_run):
    out, _, _ = smoke_run
    with pytest.raises(KvlError, match="another recipe, scale or seed"):
        recipes.run(recipes.recipe("smoke", 2), out, resume=True)
    with pytest.raises(KvlError, match="another recipe, scale or seed"):
        recipes.run(recipes.smoke(), out, seed=1, resume=True)


def test_cli_refuses_absurd_scale_in_one_line(tmp_path):
    kvl = Path(sys.executable).parent / "kvl"
    proc = subprocess.run([str(kvl), "train", "--recipe", "smoke", "--scale", "0", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--scale must be in" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before any work


def test_bpe_corpus_is_the_prompts_not_what_is_read(tmp_path):
    """Answers (page markdown, click coordinates) and line texts stay out of BPE, so the model writes what it
    reads nearly byte by byte instead of in vocabulary-dependent chunks."""
    def chat(user, answer):
        return {"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"},
                                                          {"type": "text", "text": user}]},
                             {"role": "assistant", "content": answer}]}
    paths = {}
    for kind, row in (("ocr", chat("Convert this page", "# Quarterly Zebra 18277")),
                      ("ground", chat("Click Save", "pyautogui.click(x=0.204, y=0.149)")),
                      ("line", chat("Convert this page", "qwxz 4242"))):
        paths[kind] = tmp_path / f"{kind}.jsonl"
        paths[kind].write_text(json.dumps(row) + "\n")
    texts = [t for t, _ in recipes._corpus(paths, 10)]
    assert "Convert this page" in texts and "Click Save" in texts
    assert not any(w in t for t in texts for w in ("Zebra", "18277", "0.204", "qwxz"))
