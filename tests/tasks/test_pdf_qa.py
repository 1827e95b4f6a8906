"""`kvl pdf ask`: citations, page selection under a context budget, caching across turns, and the CLI end
to end with the tiny checkpoint (random weights: its answers are gibberish, the plumbing is what is checked)."""

from __future__ import annotations

import json

import pytest

from kvl_core.errors import KvlError
from kvl_tasks import documents as D
from kvl_tasks.page_select import rank_pages, select_pages
from kvl_tasks.pdf_qa import PdfSession, is_not_answerable, page_ranges, parse_citations

from .helpers import ScriptedEngine, images_of, make_pdf, texts_of

RARE_PAGE = 27


def _filler(i: int) -> str:
    return f"Page {i} covers ordinary matters of routine business, budgets and general administration."


@pytest.fixture(scope="module")
def long_pdf(tmp_path_factory):
    """40 pages of look-alike text; only page 27 mentions the rare term."""
    texts = [_filler(i + 1) for i in range(40)]
    texts[RARE_PAGE - 1] = "This page describes the zygomorphic flowers of the orchid family in detail."
    return make_pdf(tmp_path_factory.mktemp("pdf") / "long.pdf", texts)


def _session(engine, path, **kw) -> PdfSession:
    return PdfSession(engine, D.discover([str(path)])[0][0], **kw)


# ---- answers -------------------------------------------------------------------------------------

def test_parse_citations():
    text = "Orchids [p. 27]; see also [pp. 3-5], (p. 2, 9), [page 12], [p. 30–31] and [p. 99]. Not p. 8."
    assert parse_citations(text, 40) == [2, 3, 4, 5, 9, 12, 27, 30, 31]
    assert parse_citations("no citation here", 40) == []


def test_not_answerable_and_page_ranges():
    assert is_not_answerable("Not answerable") and is_not_answerable("**Not answerable.**")
    assert not is_not_answerable("The budget was 3 million [p. 4].")
    assert page_ranges([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"


# ---- selection -----------------------------------------------------------------------------------

def test_select_pages_keeps_best_pages_with_neighbours_in_budget():
    scores = [0, 0, 5, 0, 0, 1, 0]
    # in the order taken: the best page, the page after it, the one before, then the next best and its
    # neighbours, then the rest in rank order
    assert select_pages(scores, [10] * 7, 25) == [2, 3]
    assert select_pages(scores, [10] * 7, 40) == [2, 3, 1, 5]
    assert select_pages(scores, [10] * 7, 60) == [2, 3, 1, 5, 6, 4]
    assert select_pages([0] * 5, [10] * 5, 30) == [0, 1, 2]  # no match: the first pages
    assert select_pages(scores, [10, 10, 10, 50, 10, 10, 10], 40) == [2, 1, 5, 6]  # a big page is skipped
    assert select_pages(scores, [1] * 7, 100, max_pages=2) == [2, 3]


def test_rank_pages_finds_the_rare_term():
    texts = [_filler(i) for i in range(10)]
    texts[6] = "Zygomorphic flowers are bilaterally symmetric."
    scores = rank_pages(texts, "Which flowers are zygomorphic?")
    assert max(range(10), key=scores.__getitem__) == 6
    assert rank_pages(["", ""], "anything") == [0.0, 0.0]


def test_long_pdf_selects_the_page_with_the_rare_term(tiny_processor, long_pdf):
    eng = ScriptedEngine(tiny_processor, "Orchids [p. 27].", context=1024)  # asserts the prompt fits
    session = _session(eng, long_pdf)
    ans = session.ask("Which flowers are zygomorphic?")
    assert ans.selection == "bm25" and RARE_PAGE in ans.context_pages
    assert 1 < len(ans.context_pages) < 40 and ans.cited_pages == [RARE_PAGE]
    (msgs, opts), = eng.calls
    content = msgs[0]["content"]
    labels = [content[i - 1]["text"] for i, p in enumerate(content) if p.get("type") == "image"]
    assert labels == [f"[p. {n}]" for n in ans.context_pages] and ans.context_pages == sorted(ans.context_pages)
    prompt = texts_of(msgs)
    assert f"{len(ans.context_pages)} of its 40 pages" in prompt and "Not answerable" in prompt
    assert D.prompt_tokens(tiny_processor, msgs) + opts["max_new_tokens"] <= 1024


def test_short_pdf_goes_in_whole_at_144_dpi(tiny_processor, tmp_path):
    pdf = make_pdf(tmp_path / "short.pdf", ["alpha", "beta", "gamma"], size=(612, 792))
    eng = ScriptedEngine(tiny_processor, "Not answerable", context=32768)
    ans = _session(eng, pdf).ask("What is the capital of Peru?")
    assert ans.selection == "all" and ans.context_pages == [1, 2, 3] and ans.not_answerable
    msgs, _ = eng.calls[0]
    assert "picked for the question" not in texts_of(msgs)
    assert [D.image_size(i) for i in images_of(msgs)] == [(1224, 1584)] * 3  # 8.5 x 11 in at 144 dpi


def test_scanned_pages_are_ranked_from_a_quick_ocr_pass(tiny_processor, tmp_path):
    texts = [_filler(i + 1) for i in range(12)]
    pdf = make_pdf(tmp_path / "scan.pdf", texts, image_only=range(12))
    ocr_calls = []

    def script(messages):
        if "Transcribe" in texts_of(messages):
            ocr_calls.append(1)
            return "zygomorphic orchid flowers" if len(ocr_calls) == 9 else "routine business"
        return "Orchids [p. 9]"

    eng = ScriptedEngine(tiny_processor, script, context=640)
    session = _session(eng, pdf)
    ans = session.ask("Which flowers are zygomorphic?")
    assert len(ocr_calls) == 12 and ans.selection == "bm25" and 9 in ans.context_pages
    session.ask("And what colour are they?")
    assert len(ocr_calls) == 12  # the OCR'd text is cached with the session


def test_follow_ups_reuse_rendered_pages_and_carry_history(tiny_processor, long_pdf, monkeypatch):
    eng = ScriptedEngine(tiny_processor, ["First answer [p. 27].", "Second answer."], context=1024)
    session = _session(eng, long_pdf)
    renders = []
    real = session.doc.render
    monkeypatch.setattr(session.doc, "render", lambda n, *a, **k: renders.append(n) or real(n, *a, **k))
    first = session.ask("Which flowers are zygomorphic?")
    n_first = len(renders)
    second = session.ask("Tell me more about zygomorphic orchid flowers.")
    assert set(second.context_pages) <= set(first.context_pages) | set(renders[n_first:])
    assert len(renders) - n_first == len(set(second.context_pages) - set(first.context_pages))
    msgs, _ = eng.calls[1]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert "Which flowers are zygomorphic?" in texts_of(msgs[:1]) and msgs[1]["content"] == "First answer [p. 27]."
    assert msgs[2]["content"] == "Tell me more about zygomorphic orchid flowers."


def test_pages_option_and_a_context_too_small(tiny_processor, long_pdf):
    eng = ScriptedEngine(tiny_processor, "ok", context=32768)
    assert _session(eng, long_pdf, pages="5-7").ask("anything?").context_pages == [5, 6, 7]
    tiny = ScriptedEngine(tiny_processor, "ok", context=400, max_new_tokens=64)
    with pytest.raises(KvlError, match=r"long\.pdf: not one page fits the model's context of 400 tokens"):
        _session(tiny, long_pdf).ask("Which flowers are zygomorphic?")


# ---- the CLI end to end with the tiny checkpoint -------------------------------------------------

def test_cli_json_selects_the_rare_page(kvl, tiny_dir, long_pdf):
    code, out, err = kvl("pdf", "ask", long_pdf, "Which flowers are zygomorphic?", "-m", tiny_dir, "--json",
                         "--max-new-tokens", "4")
    assert code == 0, err
    res = json.loads(out)
    assert res["selection"] == "bm25" and RARE_PAGE in res["context_pages"] and res["page_count"] == 40
    assert res["prompt_tokens"] + 4 <= 512 and res["completion_tokens"] <= 4
    code, out, err = kvl("pdf", "ask", long_pdf, "zygomorphic flowers?", "-m", tiny_dir, "--max-new-tokens", "4")
    assert code == 0 and "pages in context: " in out and "chosen by relevance" in out


def test_cli_interactive_answers_each_line(kvl, tiny_dir, long_pdf):
    code, out, err = kvl("pdf", "ask", long_pdf, "-i", "--json", "-m", tiny_dir, "--max-new-tokens", "3",
                         stdin="Which flowers are zygomorphic?\n\nWhat about the orchid family?\n/exit\n")
    assert code == 0, err
    dec, rest, answers = json.JSONDecoder(), out.strip(), []
    while rest:
        obj, end = dec.raw_decode(rest)
        answers.append(obj)
        rest = rest[end:].strip()
    assert len(answers) == 2 and all(RARE_PAGE in a["context_pages"] for a in answers)


def test_cli_errors_are_one_line(kvl, tiny_dir, tmp_path):
    locked = make_pdf(tmp_path / "locked.pdf", ["secret"], user_pw="pw")
    for args, needle in [((locked, "what?"), "locked.pdf: the PDF is encrypted; pass its password with --password"),
                         ((locked, "what?", "--pages", "3"), "locked.pdf"),
                         ((locked,), "no question")]:
        code, _, err = kvl("pdf", "ask", *args, "-m", tiny_dir)
        assert code == 1 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    code, out, err = kvl("pdf", "ask", locked, "what?", "--password", "pw", "-m", tiny_dir, "--json",
                         "--max-new-tokens", "2")
    assert code == 0 and json.loads(out)["context_pages"] == [1], err


# ---- real documents ------------------------------------------------------------------------------

def test_realdata_redbook_question_lands_on_the_right_page(realdata, tiny_engine):
    import pymupdf

    pdf = realdata / "documents" / "docling" / "redp5110_sampled.pdf"
    with pymupdf.open(pdf) as doc:  # ground truth: the pages whose text holds the term
        holders = [i + 1 for i, page in enumerate(doc) if "rochester" in page.get_text().lower()]
    assert holders
    # (its cover page has no text layer: the quick OCR pass runs, kept short for the test)
    ans = _session(tiny_engine, pdf, max_new_tokens=4, ocr_tokens=4).ask("Which author works in Rochester, Minnesota?")
    assert ans.selection == "bm25" and set(holders) & set(ans.context_pages) and ans.page_count == 18
