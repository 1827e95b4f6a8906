"""Rendered documents: sizes, line budget, and Markdown that matches what was drawn."""

import io
import random
import re
from pathlib import Path

import numpy as np
import pytest

from kvl_core.synth import common as C
from kvl_core.synth.documents import LAYOUTS, DocSpec, draw_document, glyphs, plan_document, render_document

SEEDS = range(120)


def _plans(spec=DocSpec()):
    return [plan_document(random.Random(s), spec) for s in SEEDS]


def _md_words(md: str) -> list[str]:
    words = []
    for line in md.split("\n"):
        if re.fullmatch(r"\|( --- \|)+", line):
            continue  # the table separator is not drawn
        line = re.sub(r"^#+ ", "", line)
        line = re.sub(r"^(- |\d+\. )", "", line)
        words += line.replace("**", "").replace("|", " ").split()
    return words


def _drawn_words(plan) -> list[str]:
    words = []
    for line in plan.lines:
        runs = line.runs
        if plan.layout in ("bullets", "numbered") and len(runs) == 2:
            runs = runs[1:]  # the marker glyph
        for r in runs:
            words += r.text.split()
    return words


def test_every_layout_occurs_and_markdown_is_what_was_drawn():
    plans = _plans()
    assert {p.layout for p in plans} == set(LAYOUTS)
    for p in plans:
        assert p.markdown and p.markdown == p.markdown.strip()
        assert _md_words(p.markdown) == _drawn_words(p), (p.layout, p.markdown)


def test_sizes_and_line_budget():
    for p in _plans():
        w, h = p.size
        assert 224 <= w <= 448 and w % 28 == 0
        assert 28 <= h <= 280 and h % 28 == 0
        assert 1 <= p.n_lines <= 6
        assert all(line.y + line.height <= h for line in p.lines)
        assert 13 <= p.body_size <= 18
    for p in _plans(DocSpec(max_lines=3)):
        assert p.n_lines <= 3


def test_structure_counts():
    for p in _plans():
        blocks = p.markdown.split("\n\n")
        body = blocks[-1].split("\n")
        if p.layout == "table":
            assert len(body) == p.info["rows"] + 2 and 2 <= p.info["cols"] <= 3
            assert body[1] == "| " + " | ".join(["---"] * p.info["cols"]) + " |"
            assert all(row.startswith("| ") and row.count(" | ") == p.info["cols"] - 1 for row in body)
            assert 1 <= p.info["rows"] <= 4
        elif p.layout == "bullets":
            assert len(body) == p.info["items"] and all(x.startswith("- ") for x in body)
        elif p.layout == "numbered":
            assert [x.split(". ", 1)[0] for x in body] == [str(i) for i in range(1, len(body) + 1)]
        elif p.layout == "keyvalue":
            assert len(body) == p.info["pairs"] and all(re.match(r"\*\*[A-Z][a-z]+:\*\* \S", x) for x in body)
        elif p.layout == "receipt":
            assert blocks[0].startswith("#") and body[-1].startswith("**Total:** $")
            items = [x for x in body if not x.startswith("**")]
            assert len(items) == p.info["items"]
            cents = [int(x.rsplit("$", 1)[1].replace(",", "").replace(".", "")) for x in items]
            assert sum(cents) == p.info["total"] == int(body[-1].split("$")[1].replace(",", "").replace(".", ""))
        else:
            assert "\n" not in blocks[-1]  # a wrapped paragraph is one Markdown line
        for b in blocks[:-1]:
            assert b.startswith(("# ", "## ")) or p.layout == "paragraph"


def test_render_is_rgb_with_ink_and_deterministic():
    img, md = render_document(random.Random(7))
    img2, md2 = render_document(random.Random(7))
    assert img.mode == "RGB" and md == md2 and img.tobytes() == img2.tobytes()
    assert img.convert("L").getextrema()[0] < 100  # something dark was drawn


def test_difficulty_zero_is_clean():
    spec = DocSpec.at(0)
    assert spec.noise == 0 and spec.rotation == 0 and spec.fonts == ("sans",) and spec.max_lines == 2
    p = plan_document(random.Random(1), spec)
    img = draw_document(p, random.Random(1), spec)
    assert C.is_gray(img) or p.ink != (0, 0, 0)
    assert DocSpec.at(1) == DocSpec()


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError):
        DocSpec(layouts=("poem",))
    with pytest.raises(ValueError):
        DocSpec(max_lines=0)


def test_pillow_default_font_fallback(monkeypatch):
    C.get_font.cache_clear()
    monkeypatch.setattr(C, "font_dir", lambda: None)
    try:
        img, md = render_document(random.Random(3))
        assert img.size[0] >= 224 and md
    finally:
        C.get_font.cache_clear()


def _ink_near(img, x: float, y: float, r: int = 3) -> int:
    g = img.convert("L")
    xs = range(max(0, round(x) - r), min(g.width, round(x) + r + 1))
    ys = range(max(0, round(y) - r), min(g.height, round(y) + r + 1))
    return min(g.getpixel((i, j)) for i in xs for j in ys)


@pytest.mark.parametrize("rotation", [0.0, 1.0])
def test_glyph_centres_sit_on_the_drawn_ink(rotation):
    """The dense reading targets are only as good as these positions: every non-space glyph centre has
    ink within a third of the font size (the hole of an "O" is no ink), also after the scanner rotation
    (which moves the glyphs by up to ~4 px); a line pitch is at least 1.3 sizes, so a centre put on the
    wrong line fails."""
    from kvl_core.synth.documents import glyphs

    spec = DocSpec(rotation=rotation, noise=0.0, blur=0.0, fonts=C.DOC_FAMILIES, random_words=0.5)
    rotated = 0
    for seed in range(30):
        rng = random.Random(seed)
        plan = plan_document(rng, spec)
        drawn = {}
        img = draw_document(plan, rng, spec, record=drawn)
        rotated += drawn["angle"] != 0
        gl = glyphs(plan, drawn["angle"])
        assert "".join(g.char for g in gl) == "".join(r.text for line in plan.lines for r in line.runs)
        dark = [_ink_near(img, g.x, g.y, g.size // 3) for g in gl if g.char.strip() and g.char not in ".,:'-"]
        assert max(dark) < 160, (seed, plan.family)
    assert rotated > 0 if rotation else rotated == 0


def test_random_vocabulary_replaces_words_and_restores_the_lists():
    before = (C.NOUNS, C.ITEMS, C.MONTHS)
    with C.random_vocabulary(random.Random(3)):
        assert C.NOUNS != before[0] and [len(w) for w in C.NOUNS] == [len(w) for w in before[0]]
        assert C.MONTHS[0][0].isupper() and C.MONTHS[0] != "January"
    assert (C.NOUNS, C.ITEMS, C.MONTHS) == before
    corpus = {w.lower() for lst in (C.NOUNS, C.ADJECTIVES, C.VERBS_PAST, C.ITEMS, C.CITIES) for x in lst for w in x.split()}
    spec = DocSpec(random_words=1.0)
    a = [plan_document(random.Random(s), spec).markdown for s in range(20)]
    assert a == [plan_document(random.Random(s), spec).markdown for s in range(20)]  # still seeded
    words = [w.lower() for md in a for w in re.findall(r"[A-Za-z]{4,}", md)]
    known = sum(w in corpus for w in words)
    assert known < 0.2 * len(words)  # almost every word is outside the corpus ("Total", "Date" stay)
    plain = [plan_document(random.Random(s)).markdown for s in range(20)]
    assert plain == [plan_document(random.Random(s), DocSpec(random_words=0.0)).markdown for s in range(20)]


def test_random_vocabulary_draws_keys_and_word_salad_only_inside_the_block():
    with C.random_vocabulary(random.Random(5)):
        assert set(C.KEY_LABELS) == set(C.KEYS) and all(C.KEY_LABELS[k] != k for k in C.KEYS if len(k) > 2)
        assert C.SALAD > 0
        rng = random.Random(0)
        sentences = [C.sentence(rng) for _ in range(200)]
    assert C.KEY_LABELS == {} and C.SALAD == 0.0
    # the templates' own words ("Please ... before", "costs", " is ... and ") are missing from the salad half
    templated = sum(s.startswith("Please ") or " costs " in s or " is " in s for s in sentences)
    assert 0.1 * len(sentences) < templated < 0.4 * len(sentences)
    plain = [C.sentence(random.Random(s)) for s in range(50)]
    assert all(s.endswith((".", "!")) for s in plain)  # outside the block every sentence is a template
    spec = DocSpec(random_words=1.0)
    kv = [p for p in (plan_document(random.Random(s), spec) for s in range(80)) if p.layout == "keyvalue"]
    keys = {k for p in kv for k in re.findall(r"\*\*([^*]+):\*\*", p.markdown)}
    assert kv and not keys & set(C.KEYS)  # the keys drawn are random words too


def test_every_document_font_family_loads():
    for fam in C.DOC_FAMILIES:
        for bold in (False, True):
            f = C.get_font(fam, 14, bold)
            assert f.getlength("Ag") > 0
    assert getattr(C.get_font("aileron", 14, True), "kvl_fake_bold", False)  # Aileron has no bold face
    assert not getattr(C.get_font("sans", 14, True), "kvl_fake_bold", False)


@pytest.mark.parametrize("fam", sorted(C.PACKAGED))
def test_packaged_typefaces_draw_every_character_in_two_weights(fam):
    pytest.importorskip("pymupdf_fonts")
    from fontTools.ttLib import TTFont

    for bold in (False, True):
        font = C.get_font(fam, 16, bold)
        assert not getattr(font, "kvl_fake_bold", False)  # a real bold face
        cmap = TTFont(io.BytesIO(C._packaged(C.PACKAGED[fam][bold]))).getBestCmap()
        assert all(c in cmap for c in range(32, 127)) and 0x2022 in cmap  # no .notdef box on a page
    spec = DocSpec(fonts=(fam,), noise=0.0, blur=0.0, rotation=0.0)
    plan = plan_document(random.Random(3), spec)
    img = draw_document(plan, random.Random(3), spec)
    ink = np.asarray(img.convert("L")) < 128
    assert plan.family == fam and ink.any()
    for g in glyphs(plan):  # every glyph centre sits on or next to ink
        if g.char.isalnum():
            y, x = round(g.y), round(g.x)
            assert ink[max(0, y - 4):y + 5, max(0, x - 4):x + 5].any(), (fam, g)


def test_packaged_typefaces_are_not_faces_of_the_unseen_sets():
    ood = (Path(__file__).resolve().parents[2] / "bench" / "nano_ood.py").read_text()
    assert not any(name in ood for name in ("FiraGO", "Noto", "Ubuntu", "Cascadia", "Space Mono", "Fira Mono"))


def test_registered_family_draws_a_document_with_its_own_file(tmp_path):
    from kvl_core.errors import KvlError

    d = C.font_dir()
    if d is None:
        pytest.skip("matplotlib's fonts are not installed")
    C.register_family("test-serif-face", d / "DejaVuSerif.ttf")
    try:
        assert C.get_font("test-serif-face", 14).path.endswith("DejaVuSerif.ttf")
        assert C.get_font("test-serif-face", 14, True).path.endswith("DejaVuSerif.ttf")  # no bold file: the face itself
        spec = DocSpec(fonts=("test-serif-face",), noise=0.0, blur=0.0, rotation=0.0)
        plan = plan_document(random.Random(1), spec)
        assert plan.family == "test-serif-face" and (np.asarray(draw_document(plan, random.Random(1), spec).convert("L")) < 128).any()
    finally:
        C._REGISTERED.pop("test-serif-face", None)
        C.get_font.cache_clear()
    bad = tmp_path / "notafont.ttf"
    bad.write_bytes(b"hello")
    with pytest.raises(KvlError, match="notafont.ttf"):
        C.register_family("broken", bad)
    with pytest.raises(KvlError, match="built in"):
        C.register_family("sans", d / "DejaVuSerif.ttf")
    with pytest.raises(ValueError, match="unknown font family"):
        C.get_font("test-serif-face", 14)
