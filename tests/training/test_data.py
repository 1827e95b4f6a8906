"""Training data: JSONL reading, loss masks, packing isolation, determinism/resume, bad input, mixtures
(training.md §2.3–2.4). The tiny tokenizer is byte-level, so text ids are UTF-8 bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from kvl_core.errors import KvlError
from kvl_core.training.data import (
    IGNORE, DataStats, Encoded, Mixture, Packer, Ramp, Source, Stream, encode_sample, read_samples, source_order,
    timestamp_label,
)


@pytest.fixture(scope="module")
def proc(tiny_dir):
    from kvl_core.processor import Processor

    return Processor.from_pretrained(tiny_dir)


def png(path: Path, w: int, h: int, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(q, a, image=None, system=None, more=()):
    user = q if image is None else [{"type": "image", "image": image}, {"type": "text", "text": q}]
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": a}]
    for q2, a2 in more:
        msgs += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
    return {"messages": msgs}


CHATS = [
    chat("What is 2+2?", "It is 4."),
    chat("Name a colour.", "Red.", system="Be brief."),
    chat("Describe the picture.", "A red square.", image="img/red.png"),
    chat("Hi", "Hello!", more=[("And bye?", "Goodbye, friend."), ("Last?", "Yes.")]),
    chat("Two plus three?", "Five."),
    chat("Which shape?", "A wide green box.", image="img/wide.png"),
]
TEXTS = [{"text": t} for t in ["The quick brown fox.", "Lorem ipsum dolor sit amet, consectetur.",
                                "Packing keeps documents apart.", "abc", "Zebras are striped.",
                                "One more line of text for the mixture."]]


@pytest.fixture
def data(tmp_path):
    png(tmp_path / "img" / "red.png", 28, 28, (255, 0, 0))
    png(tmp_path / "img" / "wide.png", 56, 28, (0, 200, 0))
    return {"chat": jsonl(tmp_path / "chat.jsonl", CHATS), "text": jsonl(tmp_path / "text.jsonl", TEXTS),
            "dir": tmp_path}


def runs(labels_row: torch.Tensor) -> list[list[int]]:
    """Maximal runs of consecutive supervised targets in one row."""
    out, cur = [], []
    for v in labels_row.tolist():
        if v != IGNORE:
            cur.append(v)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def digest(b) -> str:
    h = hashlib.sha256()
    for t in (b.input_ids, b.labels, b.position_ids, b.doc_ids, b.pixel_values, b.image_grid_hws):
        h.update(b"none" if t is None else t.contiguous().numpy().tobytes())
    h.update(repr(b.sample_ids).encode())
    return h.hexdigest()


# ---- (a) SFT masks ------------------------------------------------------------------------------

def test_sft_targets_are_exactly_the_assistant_answers(data, proc):
    stream = Stream([Source(data["chat"])], proc, seq_len=200, batch_rows=2, seed=3, supervise="sft")
    tok = proc.tokenizer
    seen_multi_doc_row = False
    for _ in range(3):
        b = stream.next_global()
        for r in range(b.rows):
            docs = b.sample_ids[r]
            seen_multi_doc_row |= len(docs) > 1
            # Expectation from the JSONL text: every assistant message of the row's documents, in order,
            # each followed by its <|im_end|> - and nothing else (no system/user text, no image block).
            expected = []
            for sid in docs:
                line = int(stream.locate(sid).rsplit(":", 1)[1])
                expected += [m["content"] + "<|im_end|>" for m in CHATS[line - 1]["messages"]
                             if m["role"] == "assistant"]
            got = [tok.decode(run, skip_special_tokens=False) for run in runs(b.labels[r])]
            assert got == expected
            assert b.n_supervised == int((b.labels != IGNORE).sum())
    assert seen_multi_doc_row


def test_pretrain_supervises_all_text_but_no_image_placeholder(data, proc):
    (s,) = [x for x in read_samples(Source(data["chat"])) if x.line == 3]
    enc = encode_sample(s, proc, "pretrain")
    pad = proc.tokenizer.media_pad_id
    assert pad in enc.input_ids
    assert all(m == (i != pad) for i, m in zip(enc.input_ids, enc.labels_mask))
    text = encode_sample(read_samples(Source(data["text"]))[0], proc, "pretrain")
    assert text.input_ids == list(b"The quick brown fox.") + [proc.tokenizer.eos_id]
    assert all(text.labels_mask)


def test_caption_supervises_only_caption_and_eos(tmp_path, proc):
    png(tmp_path / "cat.png", 56, 28, (10, 20, 30))
    src = jsonl(tmp_path / "cap.jsonl", [{"image": "cat.png", "caption": "A dark box."}])
    enc = encode_sample(read_samples(Source(src, kind="caption"))[0], proc, "all")
    tok = proc.tokenizer
    sup = [i for i, m in zip(enc.input_ids, enc.labels_mask) if m]
    assert tok.decode(sup, skip_special_tokens=False) == "A dark box.[EOS]"
    assert enc.input_ids[0] == tok.media_start_id and enc.input_ids.count(tok.media_pad_id) == 2
    assert enc.image_spans == [(0, enc.input_ids.index(tok.media_end_id) + 1)]
    assert enc.pixel_values.shape[0] == int(enc.image_grid_hws.prod(-1).sum())


def test_video_frames_become_labelled_images(tmp_path, proc):
    for k in range(3):
        png(tmp_path / f"f{k}.png", 28, 28, (k * 80, 0, 0))
    row = {"messages": [{"role": "user", "content": [
        {"type": "video", "frames": ["f0.png", "f1.png", "f2.png"], "timestamps": [0, 5, 3671]},
        {"type": "text", "text": "What happens?"}]}, {"role": "assistant", "content": "Red fades in."}]}
    (s,) = read_samples(jsonl(tmp_path / "v.jsonl", [row]))
    parts = s.messages[0]["content"]
    assert [p.get("text") for p in parts if p["type"] == "text"] == [
        "[00:00:00]", "[00:00:05]", "[01:01:11]", "What happens?"]
    assert [Path(p["image"]).name for p in parts if p["type"] == "image"] == ["f0.png", "f1.png", "f2.png"]
    enc = encode_sample(s, proc)
    assert enc.n_images == 3 and len(enc.image_spans) == 3
    assert timestamp_label(59.9) == "[00:00:59]"


# ---- (b) packed documents do not attend to each other -------------------------------------------

def test_packed_logits_equal_each_document_alone(data, proc, tiny_model, tmp_path):
    png(tmp_path / "cap.png", 28, 56, (0, 0, 250))
    cap = jsonl(tmp_path / "cap.jsonl", [{"image": "cap.png", "caption": "Blue."}])
    docs = [encode_sample(read_samples(Source(data["text"]))[1], proc, "all"),
            encode_sample([x for x in read_samples(Source(data["chat"])) if x.line == 3][0], proc, "sft"),
            encode_sample(read_samples(Source(cap))[0], proc, "all")]
    total = sum(len(d) for d in docs)
    packer = Packer(total + 7, proc.tokenizer.pad_id)  # tail padding included
    (b,) = list(packer.pack(docs, rows=1))
    assert b.sample_ids == [[0, 1, 2]] and b.image_grid_hws.shape[0] == 2
    with torch.no_grad():
        packed = tiny_model(b.input_ids, b.pixel_values, b.image_grid_hws,
                            position_ids=b.position_ids, doc_ids=b.doc_ids).logits[0]
        leaky = tiny_model(b.input_ids, b.pixel_values, b.image_grid_hws).logits[0]
        o = 0
        for d in docs:
            alone = tiny_model(torch.tensor([d.input_ids]), d.pixel_values, d.image_grid_hws).logits[0]
            torch.testing.assert_close(packed[o:o + len(d)], alone, atol=1e-5, rtol=0)
            if o:  # control: plain causal attention over the packed row lets later documents see earlier ones
                assert (leaky[o:o + len(d)] - alone).abs().max() > 1e-3
            o += len(d)
    assert torch.isfinite(packed).all()  # the padding pseudo-document has a non-empty mask


# ---- (c) positions, labels, padding -------------------------------------------------------------

def test_packer_layout_positions_labels_and_pad_rows():
    A = Encoded([10, 11, 12], [True, True, True])
    B = Encoded([20, 21, 22, 23], [False, False, True, True])
    C = Encoded([30, 31, 32, 33, 34], [True] * 5)
    packer = Packer(8, pad_id=99)
    (b,) = list(packer.pack([("a", A), ("b", B), ("c", C)], rows=3))
    assert b.input_ids.tolist() == [[10, 11, 12, 20, 21, 22, 23, 99], [30, 31, 32, 33, 34, 99, 99, 99], [99] * 8]
    # labels are the next token inside a document; the last token of a document predicts nothing
    assert b.labels.tolist() == [[11, 12, -100, -100, 22, 23, -100, -100],
                                 [31, 32, 33, 34, -100, -100, -100, -100], [-100] * 8]
    assert b.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 0, 1, 2], list(range(8))]
    assert b.doc_ids.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2], [0, 0, 0, 0, 0, 1, 1, 1], [0] * 8]
    assert (b.n_tokens, b.n_supervised, b.sample_ids) == (12, 8, [["a", "b"], ["c"], []])
    assert b.pixel_values is None and b.image_grid_hws is None
    cu, mx = b.cu_seqlens()
    assert cu.tolist() == [0, 3, 7, 8, 13, 16, 24] and mx == 8 and cu.dtype == torch.int32
    # first fit: a later short document fills an earlier row's gap; a batch closes on the first misfit
    batches = list(packer.pack([C, A, Encoded([40, 41, 42], [True] * 3), Encoded([1] * 8, [True] * 8)], rows=1))
    assert [x.sample_ids for x in batches] == [[[0, 1]], [[2]], [[3]]]


def test_truncation_never_cuts_an_image_block():
    # ids: 2 text, image1 block [2,6) (4 patches -> 1 token), 2 text, image2 block [8,14) (8 patches), text
    ids = [1, 2, 274, 5, 275, 277, 3, 4, 274, 5, 275, 277, 277, 276, 6, 7, 8, 9, 10, 11]
    ids[5] = 277
    enc = Encoded(ids, [True] * 20, torch.randn(12, 3, 14, 14), torch.tensor([[2, 2], [2, 4]]), [(2, 6), (8, 14)])
    packer = Packer(10, pad_id=0)
    cut = packer.fit(enc)
    assert cut.input_ids == ids[:8] and cut.image_spans == [(2, 6)]
    assert cut.image_grid_hws.tolist() == [[2, 2]] and torch.equal(cut.pixel_values, enc.pixel_values[:4])
    assert packer.stats.truncated == 1
    # nothing supervised left before the image block -> dropped, counted
    only_answer = Encoded(ids, [False] * 14 + [True] * 6, enc.pixel_values, enc.image_grid_hws, enc.image_spans)
    assert packer.fit(only_answer) is None and packer.stats.dropped == 1
    drop = Packer(10, pad_id=0, overlong="drop")
    assert drop.fit(enc) is None and drop.stats.dropped == 1 and drop.stats.truncated == 0
    assert drop.fit(Encoded(ids[:10], [True] * 10)) is not None  # exactly seq_len fits


# ---- (d) determinism, resume, world size --------------------------------------------------------

def make_stream(data, proc, **kw):
    sources = [Source(data["chat"], weight=1.0), Source(data["text"], weight=2.0)]
    args = dict(seq_len=160, batch_rows=2, seed=11, supervise="all", ratio=Ramp(0.0, 0.6, 4))
    args.update(kw)
    return Stream(sources, proc, **args)


def test_same_seed_same_batches_and_resume_replays_exactly(data, proc):
    N, k = 7, 3
    ref = make_stream(data, proc)
    full = [ref.next_global() for _ in range(N)]
    assert all(len(sid) == 0 or sid[0] == 1 for row in full[0].sample_ids for sid in row)  # ramp at 0: text only
    assert max(ref.epochs().values()) > 1.0  # epochs wrapped with new permutations
    again = [make_stream(data, proc).next_global() for _ in range(1)]
    assert digest(again[0]) == digest(full[0])
    other = make_stream(data, proc, seed=12)
    assert [digest(other.next_global()) for _ in range(3)] != [digest(b) for b in full[:3]]

    first = make_stream(data, proc)
    for _ in range(k):
        first.next_global()
    state = json.loads(json.dumps(first.state_dict()))
    assert state["carry"]  # a batch closes on a document that did not fit: it is carried over
    resumed = make_stream(data, proc)
    resumed.load_state_dict(state)
    assert [digest(resumed.next_global()) for _ in range(N - k)] == [digest(b) for b in full[k:]]
    assert resumed.stats.as_dict() == ref.stats.as_dict()


def test_rank_shards_concatenate_to_the_global_batch_across_world_sizes(data, proc):
    ref = make_stream(data, proc, batch_rows=4)
    full, states = [], []
    for _ in range(4):
        states.append(json.loads(json.dumps(ref.state_dict())))
        full.append(ref.next_global())
    ranks = [make_stream(data, proc, batch_rows=4, world_size=2, rank=r) for r in (0, 1)]
    for step, g in enumerate(full):
        if step == 2:  # resume the world-1 run's state on two fresh ranks
            ranks = [make_stream(data, proc, batch_rows=4, world_size=2, rank=r) for r in (0, 1)]
            for s in ranks:
                s.load_state_dict(states[2])
        parts = [next(s) for s in ranks]
        assert [p.rows for p in parts] == [2, 2]
        for name in ("input_ids", "labels", "position_ids", "doc_ids"):
            assert torch.equal(torch.cat([getattr(p, name) for p in parts]), getattr(g, name))
        pv = [p.pixel_values for p in parts if p.pixel_values is not None]
        assert torch.equal(torch.cat(pv), g.pixel_values) if pv else g.pixel_values is None
        assert sum(p.n_supervised for p in parts) == g.n_supervised == parts[0].global_n_supervised
        assert sum(p.n_tokens for p in parts) == g.n_tokens
        assert parts[0].sample_ids + parts[1].sample_ids == g.sample_ids
        micro = g.split(3)
        assert [m.rows for m in micro] == [3, 1]
        # micro-batches are trimmed to their own content: what they drop is tail padding only
        at = 0
        for m in micro:
            w = m.input_ids.shape[1]
            assert torch.equal(m.input_ids, g.input_ids[at:at + m.rows, :w])
            assert g.padding_mask()[at:at + m.rows, w:].all()
            at += m.rows
        assert sum(m.n_supervised for m in micro) == g.n_supervised == micro[1].global_n_supervised
    assert any(g.pixel_values is not None for g in full)


def test_order_is_a_pure_function_and_state_mismatch_is_refused(data, proc):
    assert source_order(5, 1, 2, 50) == source_order(5, 1, 2, 50)
    assert source_order(5, 1, 2, 50) != source_order(5, 1, 3, 50)
    assert sorted(source_order(5, 1, 2, 50)) == list(range(50))
    state = make_stream(data, proc).state_dict()
    with pytest.raises(KvlError, match="seed"):
        make_stream(data, proc, seed=1).load_state_dict(state)


def test_phase_change_to_a_longer_context_continues_the_same_order(data, proc):
    def run():
        s = make_stream(data, proc)
        for _ in range(2):
            s.next_global()
        state = json.loads(json.dumps(s.state_dict()))
        longer = make_stream(data, proc, seq_len=320, batch_rows=1)
        longer.load_state_dict(state)
        return state, [longer.next_global() for _ in range(2)]

    state, a = run()
    _, b = run()
    assert [digest(x) for x in a] == [digest(x) for x in b]
    # the new phase packs up to 320 tokens per row (the row is as wide as that content, rounded to 128)
    assert 160 < a[0].n_tokens <= 320 and a[0].input_ids.shape == (1, min(320, -(-a[0].n_tokens // 128) * 128))
    assert a[0].sample_ids[0][0] == tuple(state["carry"][0])  # the carried document opens the new phase


def test_caption_stream_for_the_coca_stage(tmp_path, proc):
    for k, (w, h) in enumerate([(28, 28), (56, 28), (28, 56)]):
        png(tmp_path / f"c{k}.png", w, h, (k * 60, 90, 10))
    src = jsonl(tmp_path / "caps.jsonl", [{"image": "c0.png", "caption": "One."}, chat("q", "a"),
                                          {"image": "c1.png", "caption": "Two wide."},
                                          {"image": "c2.png", "caption": "Three tall!"}])
    with pytest.raises(KvlError, match=r"caps\.jsonl:2: the ViT \(CoCa\) stage takes image-caption lines"):
        Stream([src], proc, seq_len=64, batch_rows=2, kind="caption")
    s = Stream([src], proc, seq_len=64, batch_rows=2, kind="caption", policy="skip", seed=4)
    assert s.stats.read_skipped == 1
    g = s.next_global()
    tok = proc.tokenizer
    captions = {1: "One.", 3: "Two wide.", 4: "Three tall!"}
    for r, sid in enumerate(g.sample_ids):
        want = [tok.bos_id] + list(captions[int(s.locate(sid).rsplit(":", 1)[1])].encode()) + [tok.eos_id]
        row = g.caption_ids[r].tolist()
        assert row[:len(want)] == want and set(row[len(want):]) <= {tok.pad_id}
    assert g.pixel_values.shape[0] == int(g.image_grid_hws.prod(-1).sum())
    r0, r1 = g.shard(0, 2), g.shard(1, 2)
    assert torch.equal(torch.cat([r0.caption_ids, r1.caption_ids]), g.caption_ids)
    assert torch.equal(torch.cat([r0.pixel_values, r1.pixel_values]), g.pixel_values)
    assert [m.rows for m in g.split(1)] == [1, 1]


# ---- (e) bad input ------------------------------------------------------------------------------

def test_malformed_lines_stop_or_skip(tmp_path):
    bad = jsonl(tmp_path / "bad.jsonl", [CHATS[0], '{"messages": [', CHATS[1],
                                         {"messages": [{"role": "tool", "content": "x"}]},
                                         {"messages": [{"role": "user", "content": "no answer"}]}])
    with pytest.raises(KvlError, match=r"bad\.jsonl:2: not valid JSON"):
        read_samples(bad)
    stats = DataStats()
    good = read_samples(Source(bad), policy="skip", stats=stats)
    assert [s.line for s in good] == [1, 3] and stats.read_skipped == 3
    assert any("bad.jsonl:4: message 1: unknown role 'tool'" in p for p in stats.problems)
    assert any("bad.jsonl:5: no assistant message" in p for p in stats.problems)
    with pytest.raises(KvlError, match="all 3 non-empty lines are invalid"):
        read_samples(jsonl(tmp_path / "allbad.jsonl", ["[1]", "nope", '{"text": ""}']), policy="skip")


def test_missing_image_empty_file_and_wrong_kind(tmp_path):
    src = jsonl(tmp_path / "d.jsonl", [chat("q", "a"), chat("q", "a", image="gone.png")])
    with pytest.raises(KvlError, match=r"d\.jsonl:2: message 1 part 1: image not found: .*gone\.png"):
        read_samples(src)
    with pytest.raises(KvlError, match="empty dataset"):
        read_samples(jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(KvlError, match="no such file"):
        read_samples(tmp_path / "nope.jsonl")
    with pytest.raises(KvlError, match=r"t\.jsonl:1: 'caption' must be"):
        read_samples(Source(jsonl(tmp_path / "t.jsonl", [{"text": "x"}]), kind="caption"))


def test_corrupt_image_and_overlong_samples_are_counted(tmp_path, proc):
    (tmp_path / "junk.png").write_bytes(b"not a png")
    src = jsonl(tmp_path / "c.jsonl", [chat("q", "a", image="junk.png"), chat("q", "ok")])
    with pytest.raises(KvlError, match=r"c\.jsonl:1: .*junk\.png"):
        Stream([src], proc, seq_len=128, batch_rows=1).next_global()
    s = Stream([src], proc, seq_len=128, batch_rows=1, policy="skip")
    b = s.next_global()
    assert s.stats.skipped >= 1 and all(sid == (0, 1) for sid in b.sample_ids[0])
    texts = jsonl(tmp_path / "long.jsonl", [{"text": "x" * 100}, {"text": "short"}])
    t = Stream([texts], proc, seq_len=40, batch_rows=1, supervise="all")
    for _ in range(4):
        t.next_global()
    assert t.stats.truncated >= 1 and t.stats.dropped == 0
    d = Stream([texts], proc, seq_len=40, batch_rows=1, supervise="all", overlong="drop")
    for _ in range(4):
        assert all(sid == (0, 1) for sid in d.next_global().sample_ids[0])
    assert d.stats.dropped >= 1 and d.stats.truncated == 0
    only_long = jsonl(tmp_path / "only.jsonl", [{"text": "x" * 100}])
    with pytest.raises(KvlError, match="no usable sample"):
        Stream([only_long], proc, seq_len=40, batch_rows=1, overlong="drop").next_global()


# ---- (f) mixture ratio ------------------------------------------------------------------------

def test_multimodal_share_follows_the_ramp():
    ramp = Ramp(0.1, 0.5, steps=1000)
    mix = Mixture([1.0, 1.0, 2.0], [False, True, True], seed=7, ratio=ramp)
    for lo, hi in ((0, 100), (450, 550), (900, 1000)):
        picks = [mix.choose(s, k) for s in range(lo, hi) for k in range(50)]
        share = sum(p != 0 for p in picks) / len(picks)
        expect = sum(ramp(s) for s in range(lo, hi)) / (hi - lo)
        assert abs(share - expect) < 0.03, (lo, share, expect)
        mm = [p for p in picks if p]
        assert abs(mm.count(2) / len(mm) - 2 / 3) < 0.05  # weights within the group
    assert ramp(-5) == 0.1 and ramp(10_000) == 0.5
    assert [mix.choose(3, k) for k in range(20)] == [Mixture([1, 1, 2], [0, 1, 1], 7, ramp).choose(3, k)
                                                     for k in range(20)]


# ---- rows no wider than their data (issue 18) ---------------------------------------------------

def test_a_small_dataset_gives_one_pass_per_step_in_rows_as_wide_as_their_content(tmp_path, proc):
    texts = jsonl(tmp_path / "t.jsonl", [{"text": "word " * (3 + 7 * i)} for i in range(6)])
    s = Stream([Source(texts)], proc, seq_len=32768, batch_rows=4, seed=2, supervise="all")
    seen = []
    for _ in range(3):
        b = s.next_global()
        ids = [sid for row in b.sample_ids for sid in row]
        assert len(ids) == len(set(ids)) <= 6  # never the same sample twice in one step
        seen += ids
        used = b.used()
        assert b.input_ids.shape == (4, -(-used // 128) * 128) and used == max(len(r) and
                                                                               int((b.doc_ids[i] < len(r)).sum())
                                                                               for i, r in enumerate(b.sample_ids))
        micro = b.split(1)
        assert [m.input_ids.shape[1] for m in micro] == [max(128, -(-int(m.n_tokens) // 128) * 128) for m in micro]
        assert sum(m.n_supervised for m in micro) == b.n_supervised
    # the draws still walk the epoch permutations in order: every sample once per epoch
    assert sorted(seen[:6]) == sorted(seen[6:12]) == [(0, i) for i in range(6)]


def test_trimmed_rows_give_the_same_loss_as_full_width_rows(data, proc, tiny_dir):
    from kvl_core.model import KimiVLForConditionalGeneration

    model = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    s = Stream([Source(data["chat"])], proc, seq_len=1000, batch_rows=2, seed=3, supervise="sft")
    b = s.next_global()
    assert b.input_ids.shape[1] < 1000
    T = 1000

    def widen(t, fill):
        return torch.cat([t, torch.full((t.shape[0], T - t.shape[1]), fill, dtype=t.dtype)], 1)

    last = torch.tensor([len(r) for r in b.sample_ids])[:, None]
    wide = dict(input_ids=widen(b.input_ids, 0), position_ids=widen(b.position_ids, 0),
                doc_ids=torch.where(widen(b.doc_ids, -1) < 0, last, widen(b.doc_ids, -1)))
    with torch.no_grad():
        narrow = model(b.input_ids, pixel_values=b.pixel_values, image_grid_hws=b.image_grid_hws,
                       position_ids=b.position_ids, doc_ids=b.doc_ids).logits
        full = model(wide["input_ids"], pixel_values=b.pixel_values, image_grid_hws=b.image_grid_hws,
                     position_ids=wide["position_ids"], doc_ids=wide["doc_ids"]).logits
    keep = ~b.padding_mask()
    torch.testing.assert_close(narrow[keep], full[:, : b.input_ids.shape[1]][keep], atol=1e-5, rtol=1e-5)
