"""Describing scenes: the model's `(HH:MM:SS - HH:MM:SS)` answers parsed and snapped (scripted engine), prompts and
budgets (the tiny checkpoint's real processor), and the whole path on the tiny checkpoint (plumbing only)."""

import json
import math
import re
from types import SimpleNamespace

import pytest

from kvl_tasks.video.describe import (SCENE_PROMPT, clean_description, describe_scenes, model_scenes, normalize,
                                      parse_ranges, plan_frames, snap)
from kvl_tasks.video.scenes import find_scenes


class Scripted:
    """The `Engine.chat` signature with canned answers; optionally the real tiny processor and its context."""

    def __init__(self, replies, processor=None, context=None):
        self.replies, self.calls, self.name = list(replies), [], "scripted"
        if processor is not None:
            self.processor = processor
            self.model = SimpleNamespace(config=SimpleNamespace(text=SimpleNamespace(max_position_embeddings=context)))

    def chat(self, messages, on_text=None, **options):
        self.calls.append((messages, options))
        text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return SimpleNamespace(text=text, answer=text, reasoning=None, truncated=False, finish_reason="stop")


def _parts(messages, kind):
    return [p for p in messages[0]["content"] if p["type"] == kind]


def test_parse_ranges_is_lenient_but_not_gullible():
    answer = """Here are the scenes:
1. (00:00:00 - 00:00:05) A man walks in.
- [00:00:05–00:00:12]: **Close-up** of a cat
(0:12 to 0:20) Sunset.
(00:00:20.5 - 00:00:31) "Credits roll"
(00:00:99 - 00:01:00) impossible seconds
the cat sleeps at 00:00:03
(00:00:40 - 00:00:35) written backwards
(00:00:50 - 00:00:55)"""
    ranges, bad = parse_ranges(answer)
    assert ranges == [(0, 5, "A man walks in."), (5, 12, "Close-up of a cat"), (12, 20, "Sunset."),
                      (20.5, 31, "Credits roll"), (40, 35, "written backwards"), (50, 55, None)]
    assert bad == 1
    assert parse_ranges("no scenes here\n12:00 noon") == ([], 0)


def test_normalize_orders_splits_overlaps_clamps_and_tiles():
    ranges = [(10, 20, "b"), (0, 12, "a"), (2, 5, "inside a"), (18, 40, "c"), (35, 50, "past the end"),
              (60, 70, "after the end"), (30, 30, "empty")]
    assert normalize(ranges, 0, 45) == [[0, 11, "a"], [11, 19, "b"], [19, 37.5, "c"], [37.5, 45, "past the end"]]
    # gaps join the scene before them; the first scene starts at the window start
    assert normalize([(3, 5, "x"), (8, 9, "y")], 1, 10) == [[1, 8, "x"], [8, 10, "y"]]
    assert normalize([], 0, 10) == [[0, 10, None]]


def test_snap_moves_boundaries_onto_nearby_cuts_once():
    assert snap([11, 19, 37.5], [10.0, 19.4, 30.0], 1.0) == [10.0, 19.4, 37.5]
    out = snap([10.2, 10.3], [10.25], 1.0)
    assert out[0] == 10.25 and out[1] == pytest.approx(10.3)
    collapsed = snap([10.5, 10.5], [], 1.0)
    assert collapsed[0] == 10.5 and math.isnan(collapsed[1])


def test_model_mode_snaps_the_models_scenes_to_exact_cuts(vids):
    path, cuts = vids["cuts"]  # cuts at 1.000 s and 2.333 s; the video lasts 3.167 s
    r = find_scenes(path)
    engine = Scripted(["Sure!\n(00:00:00 - 00:00:01) red stripes\n(00:00:01 - 00:00:02) green stripes\n"
                       "(00:00:02 - 00:09:00) blue stripes until long after the end\ngarbage (99:99 - x)"])
    r, answer = model_scenes(engine, r, max_frames=8)
    assert r.mode == "model"
    assert [(s.start_frame, s.end_frame) for s in r.scenes] == [(0, 30), (30, 70), (70, 95)]
    assert [s.description for s in r.scenes] == ["red stripes", "green stripes", "blue stripes until long after the end"]
    assert r.scenes[-1].end_time == pytest.approx(95 / 30)
    messages, options = engine.calls[0]
    labels = [p["text"] for p in _parts(messages, "text")[:-1]]
    assert len(_parts(messages, "image")) == len(labels) == 4  # ~1 fps over 3.2 s
    assert all(re.fullmatch(r"\[00:00:0\d\]", x) for x in labels)
    assert "(HH:MM:SS - HH:MM:SS)" in _parts(messages, "text")[-1]["text"]


def test_model_mode_without_usable_lines_keeps_the_detector(vids):
    path, _ = vids["cuts"]
    r = find_scenes(path)
    r, _ = model_scenes(Scripted(["I cannot see any scenes."]), r, max_frames=4)
    assert r.mode == "detector" and r.cuts == [30, 70]
    assert all(s.description is None for s in r.scenes)


def test_describe_each_scene_with_timestamped_keyframes(vids, tiny_processor):
    path, _ = vids["cuts"]
    r = find_scenes(path)
    engine = Scripted(["**Scene:** A red room.", "green\nstripes", '"blue"'], tiny_processor, context=512)
    assert describe_scenes(engine, r, frames_per_scene=3, max_new_tokens=40)
    assert [s.description for s in r.scenes] == ["A red room.", "green stripes", "blue"]
    for scene, (messages, options) in zip(r.scenes, engine.calls):
        labels = [p["text"] for p in _parts(messages, "text")[:-1]]
        images = [p["image"] for p in _parts(messages, "image")]
        assert len(images) == len(labels) == len(scene.keyframes) >= 1
        # each label is the real time of the frame after it, inside the scene
        for label, t in zip(labels, scene.keyframes):
            assert label == f"[00:00:{t:06.3f}]" and scene.start_time <= t < scene.end_time
        assert _parts(messages, "text")[-1]["text"] == SCENE_PROMPT
        # the whole prompt plus the answer fits the 512-token context
        assert len(tiny_processor.encode(messages).input_ids) + options["max_new_tokens"] <= 512


def test_budget_shrinks_frames_to_the_context(tiny_processor):
    e = Scripted(["x"], tiny_processor, context=512)
    b = plan_frames(e, 3, (1920, 1080), SCENE_PROMPT, 96)
    tokens = tiny_processor.image_processor.plan(*b.size).tokens
    assert b.frames >= 1 and b.size[0] / b.size[1] == pytest.approx(16 / 9, rel=0.05)
    assert b.frames * tokens <= 512 - 96
    tight = Scripted(["x"], tiny_processor, context=200)
    from kvl_core.errors import KvlError

    with pytest.raises(KvlError, match="context"):
        plan_frames(tight, 3, (1920, 1080), SCENE_PROMPT * 3, 96)


def test_clean_description():
    assert clean_description("Description: *A* dog\x0e runs.\n\n") == "A dog runs."
    assert clean_description("  ") is None


def test_tiny_checkpoint_end_to_end(vids, tiny_dir, tiny_engine, video_cli, monkeypatch, tmp_path):
    """Plumbing: the real engine on the tiny checkpoint (random weights, gibberish answers)."""
    from kvl_core.engine import Engine

    calls = []
    real_chat = tiny_engine.chat

    def counting_chat(messages, on_text=None, **options):
        calls.append(len([p for p in messages[0]["content"] if p["type"] == "image"]))
        return real_chat(messages, on_text=on_text, **options)

    monkeypatch.setattr(tiny_engine, "chat", counting_chat)
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, spec=None, device="cpu", dtype=None: tiny_engine))
    path, _ = vids["keyed"]
    out = tmp_path / "scenes.json"
    code, _, err = video_cli(path, "--model", tiny_dir, "--max-new-tokens", "3", "--frames-per-scene", "2",
                             "-o", out, "-q")
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["cuts"] == [24] and calls == [2, 2]  # one call per scene, its keyframes as images
    assert all("description" in s for s in data["scenes"])
    code, _, err = video_cli(path, "--model", tiny_dir, "--mode", "model", "--max-new-tokens", "3", "-q",
                             "-f", "json")
    assert code == 0, err


def test_ctrl_c_while_describing_keeps_what_is_done(vids, video_cli, monkeypatch, tmp_path):
    from kvl_core.engine import Engine

    class Interrupting(Scripted):
        def chat(self, messages, on_text=None, **options):
            if self.calls:
                raise KeyboardInterrupt
            return super().chat(messages, on_text, **options)

    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, spec=None, device="cpu", dtype=None:
                                                    Interrupting(["a red scene"])))
    out = tmp_path / "s.json"
    code, _, err = video_cli(vids["cuts"][0], "--model", tmp_path, "-o", out, "-q")
    assert code == 130 and "1 of 3 scenes have a description" in err
    data = json.loads(out.read_text())
    assert data["partial"] and [s["description"] for s in data["scenes"]] == ["a red scene", None, None]


def test_the_model_sees_rotated_video_upright(tmp_path, tiny_processor):
    """Frames sampled for the model follow the display matrix, in both modes: portrait stays portrait."""
    from .test_video_decode import _red_corner, _rotated_video

    r = find_scenes(_rotated_video(tmp_path / "portrait.mp4", 90), "content")
    per_scene = Scripted(["a grey wall"], tiny_processor, context=4096)
    describe_scenes(per_scene, r, frames_per_scene=1)
    whole = Scripted(["(00:00:00 - 00:00:01) grey"])
    model_scenes(whole, r, max_frames=2)
    images = [p["image"] for e in (per_scene, whole) for p in _parts(e.calls[0][0], "image")]
    assert len(images) >= 2
    for img in images:
        w, h = img.size
        assert h > w and _red_corner(img) == "bottom-left"
