"""Every scorer of `kvl eval` on hand-written predictions whose right scores follow from the official rules
(tasks.md §3.2). No model, no files: these are the numbers a user's results rest on."""

from __future__ import annotations

import pytest

from kvl_tasks.eval.base import Sample
from kvl_tasks.eval.benchmarks import mathvista as MV
from kvl_tasks.eval.benchmarks import mmlongbench as LB
from kvl_tasks.eval.benchmarks import mmmu as MU
from kvl_tasks.eval.benchmarks.docvqa import DocVQA
from kvl_tasks.eval.benchmarks.mcq import MMBench, MMStar, build_prompt, mcq_letter
from kvl_tasks.eval.benchmarks.nano import NanoGround, NanoOCR, normalize_markdown, structure_recall
from kvl_tasks.eval.benchmarks.ocrbench import OCRBench, ocrbench_hit
from kvl_tasks.eval.benchmarks.screenspot import OSWorldG, ScreenSpotPro, ScreenSpotV2, in_polygon, parse_point
from kvl_tasks.eval.benchmarks.video import MLVU, LongVideoBench, VideoMME, uniform_times
from kvl_tasks.eval.scoring import (anls, can_infer, extract_mcq_answer, first_letter_after_prefixes, indel_ratio,
                                    last_boxed, levenshtein, strip_thinking)

# ---- shared ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,want", [
    ("plain answer", "plain answer"),
    ("◁think▷B looks right◁/think▷ A", "A"),  # only what follows the thinking block counts
    ("◁think▷still thinking about B", ""),  # unclosed block: truncated output, empty answer
    ("", ""),
    (None, ""),
])
def test_strip_thinking(text, want):
    assert strip_thinking(text) == want


def test_levenshtein_and_ratios():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    assert levenshtein(["a", "b"], ["b"]) == 1
    assert indel_ratio("abcd", "abcd") == 1.0
    assert indel_ratio("abcd", "abce") == pytest.approx(0.75)  # LCS 3: 1 - 2/8


def test_last_boxed_matches_nested_braces():
    assert last_boxed(r"so \boxed{A} no wait \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxed{unclosed") is None


# ---- OCRBench ---------------------------------------------------------------------------------------------


def test_ocrbench_case_insensitive_substring():
    assert ocrbench_hit("The word is centre.", ["CENTRE"], hme=False)
    assert ocrbench_hit("line one\nline two", ["one line"], hme=False)  # newlines read as spaces
    assert not ocrbench_hit("CENTER", ["CENTRE"], hme=False)
    assert not ocrbench_hit("", ["CENTRE"], hme=False)


def test_ocrbench_folds_fullwidth_ascii():
    assert ocrbench_hit("ＣＥＮＴＲＥ\u3000ＳＴ", ["centre st"], hme=False)


def test_ocrbench_hme_keeps_case_and_drops_spaces():
    answers = ["y _ { 2 } = - 1\n", "y_2 = - 1\n"]
    assert ocrbench_hit("y_{2}=-1", answers, hme=True)
    assert ocrbench_hit("$$ y _ {2} = -1 $$", answers, hme=True)
    assert not ocrbench_hit("Y_{2}=-1", answers, hme=True)  # case matters for math
    # the same pair outside HME: case-insensitive but space-sensitive
    assert not ocrbench_hit("y_{2}=-1", answers, hme=False)


def _ocr_sample(answers, category="Regular Text Recognition"):
    return Sample("s", {}, {"answers": answers, "hme": category.startswith("Handwritten")}, {"category": category})


def test_ocrbench_score_strips_thinking():
    b = OCRBench()
    assert b.score("◁think▷CENTRE◁/think▷it says CENTRE", _ocr_sample(["CENTRE"]))["score"] == 1.0
    assert b.score("◁think▷CENTRE◁/think▷no idea", _ocr_sample(["CENTRE"]))["score"] == 0.0
    assert b.score("◁think▷CENTRE", _ocr_sample(["CENTRE"]))["score"] == 0.0


def test_ocrbench_aggregate_groups_recognition_and_sums_points():
    recs = [{"category": "Regular Text Recognition", "score": 1.0}, {"category": "Digit String Recognition", "score": 1.0},
            {"category": "Doc-oriented VQA", "score": 0.0},
            {"category": "Handwritten Mathematical Expression Recognition", "score": 1.0}]
    agg = OCRBench().aggregate(recs)
    assert agg.metrics["final_score"] == 3 and agg.metrics["final_score_norm"] == 0.3
    assert agg.metrics["accuracy"] == 75.0
    assert agg.breakdowns["group"]["Text Recognition"] == {"n": 2, "score": 2.0}
    assert agg.breakdowns["group"]["Doc-oriented VQA"]["score"] == 0.0
    assert "not the full 1000" in agg.notes[0]


# ---- ANLS -------------------------------------------------------------------------------------------------


def test_anls_rules():
    assert anls("Hello  World", ["hello world"]) == 1.0  # normalised: case and spaces
    # distance on normalised strings, divided by the RAW length: "  ab  " (6 chars) vs "ac": 1 - 1/6
    assert anls("ac", ["  ab  "]) == pytest.approx(1 - 1 / 6)
    assert anls("abxy", ["abcd"]) == 0.5  # exactly 0.5 is kept
    assert anls("axy", ["abc"]) == 0.0  # 1/3 < 0.5 -> 0
    assert anls("abc", ["zzz", "abd"]) == pytest.approx(2 / 3)  # the best answer wins
    assert anls("", ["abc"]) == 0.0


def test_docvqa_score_and_aggregate_scale():
    b = DocVQA()
    s = Sample("1", {}, {"answers": ["1984"]})
    assert b.score("◁think▷hmm◁/think▷1984", s)["score"] == 1.0
    agg = b.aggregate([{"score": 1.0}, {"score": 0.5}, {"score": 0.0}, {"score": 0.9}])
    assert agg.metrics["anls"] == pytest.approx(60.0)


# ---- multiple choice -------------------------------------------------------------------------------------

OPTS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize("answer,want", [
    ("B", "B"),
    ("B. dog", "B"),
    ("The answer is (C).", "C"),
    ("**D**", "D"),
    ("A and B", None),  # two letters: unparsable
    ("B is wrong because the picture clearly shows a small animal", None),  # the letter is too early
    ("dog", "B"),  # no letter: the one option text in the answer
    ("a long answer that mentions the dog but is far longer than the options", None),  # too long for text match
    ("Cannot determine the answer", "Z"),
    ("", None),
])
def test_can_infer(answer, want):
    assert can_infer(answer, OPTS) == want


def test_mcq_letter_reads_boxed_and_thinking():
    assert mcq_letter(r"◁think▷A? no◁/think▷Answer: $\boxed{C}$", OPTS) == "C"
    assert mcq_letter("◁think▷A is it", OPTS) is None  # truncated thinking: no answer


@pytest.mark.parametrize("answer,ai2d,mmstar", [
    ("B", 1.0, 1.0), ("(B)", 1.0, 1.0), ("**B**", 1.0, 1.0), ("B. dog", 1.0, 1.0),
    ("The answer is B.", 0.0, 1.0),  # AI2D's lmms-eval rule: a leading "X." or the bare letter only
    ("b", 1.0, 0.0),  # its exact_match ignores case; the shared extractor does not
    ("A. cat, no: B", 0.0, 0.0),
])
def test_mcq_lmms_eval_extractors(answer, ai2d, mmstar):
    from kvl_tasks.eval.benchmarks.mcq import AI2D

    s = Sample("1", {}, {"options": OPTS, "answer": "B"}, {})
    assert AI2D(extractor="lmms-eval").score(answer, s)["score"] == ai2d
    assert MMStar(extractor="lmms-eval").score(answer, s)["score"] == mmstar


def test_mcq_prompt_is_vlmevalkit_build_prompt():
    p = build_prompt("What is it?", {"A": "cat", "B": "dog"}, hint="Look closely")
    assert p == ("Hint: Look closely\nQuestion: What is it?\nOptions:\nA. cat\nB. dog\n"
                 "Please select the correct answer from the options above. \n")
    assert build_prompt("Q", {"A": "x", "B": "y"}, hint=float("nan")).startswith("Question: Q\n")


def _rec(i, score, g, cat="c1", parsed=True):
    return {"id": str(i), "score": score, "g_index": g, "category": cat, "l2-category": cat, "parsed": parsed}


def test_mmbench_circular_fails_a_question_if_any_rotation_is_wrong():
    recs = [_rec(1, 1.0, "1"), _rec(1000001, 1.0, "1"), _rec(2000001, 1.0, "1"),  # all rotations right
            _rec(2, 1.0, "2", "c2"), _rec(1000002, 0.0, "2", "c2"),  # one rotation wrong
            _rec(3, 1.0, "3", "c2"), _rec(1000003, 0.0, "3", "c2", parsed=False)]  # one unparsable
    agg = MMBench().aggregate(recs)
    assert agg.metrics["accuracy"] == pytest.approx(100 / 3)
    assert agg.metrics["vanilla_accuracy"] == pytest.approx(500 / 7)
    assert agg.metrics["unparsable_groups"] == pytest.approx(100 / 3)
    assert agg.breakdowns["category"]["c1"]["score"] == 100.0
    assert agg.breakdowns["category"]["c2"] == {"n": 2, "score": 0.0}


def test_mmbench_score_row():
    s = Sample("1", {}, {"options": OPTS, "answer": "B"}, {})
    assert MMBench().score("B", s) == {"score": 1.0, "extracted": "B", "parsed": True, "gt": "B"}
    assert MMBench().score("no idea", s)["parsed"] is False


def test_mmstar_reports_plain_mean_and_l2_macro_mean():
    recs = [{"score": 1.0, "l2-category": "a"}, {"score": 0.0, "l2-category": "a"}, {"score": 1.0, "l2-category": "b"}]
    m = MMStar().aggregate(recs).metrics
    assert m["accuracy"] == pytest.approx(200 / 3)  # VLMEvalKit
    assert m["l2_macro_accuracy"] == pytest.approx(75.0)  # lmms-eval


# ---- MMMU --------------------------------------------------------------------------------------------------

MU_OPTS = {"A": "red apple", "B": "green pear", "C": "yellow banana", "D": "blue plum"}


@pytest.mark.parametrize("resp,want", [
    ("(B)", "B"),
    ("The answer is C", "C"),
    ("A.", "A"),
    ("(A) looks close but (D) is right", "D"),  # several: the last one
    ("I would pick the yellow banana in this picture", "C"),  # > 5 words: option text
    ("no clue", None),
])
def test_mmmu_parse_multi_choice(resp, want):
    assert MU.parse_multi_choice(resp, MU_OPTS)[0] == want


def test_mmmu_open_rules():
    assert MU.eval_open(["3.14"], MU.parse_open("so the answer is 3.14159"))  # floats rounded to 2 places
    assert MU.eval_open(["Paris"], MU.parse_open("The capital is paris."))
    assert MU.eval_open(["1,000"], MU.parse_open("the total = 1000"))
    assert not MU.eval_open(["42"], MU.parse_open("the answer is 41"))
    assert MU.normalize_str("a") == [" a", "a "]


def test_mmmu_unparsable_answer_uses_a_seeded_choice_or_zero():
    s = Sample("validation_Art_1", {}, {"options": MU_OPTS, "answer": ["B"], "mc": True}, {})
    b = MU.MMMU()
    first, again = b.score("no clue", s), b.score("no clue", s)
    assert first == again and first["fallback"] == "random" and first["parsed"] is False
    assert first["extracted"] in MU_OPTS
    zero = MU.MMMU(fallback="zero").score("no clue", s)
    assert zero["score"] == 0.0 and zero["extracted"] is None
    # the box is read only under the Kimi thinking prompt (the official parsers read the whole answer)
    assert MU.MMMU(prompt="boxed").score(r"◁think▷...◁/think▷Answer: $\boxed{B}$", s)["score"] == 1.0
    assert MU.MMMU(fallback="zero").score(r"Answer: $\boxed{B}$", s)["parsed"] is False
    assert MU.parse_multi_choice("答案是D", MU_OPTS)[0] == "D"  # lmms-eval looks for "X " without a space before


def test_mmmu_aggregate_counts_guesses():
    agg = MU.MMMU().aggregate([{"score": 1.0, "fallback": "random", "subject": "Art"}, {"score": 0.0, "subject": "Art"}])
    assert agg.metrics == {"accuracy": 50.0} and agg.counts == {"guessed": 1}
    assert "seeded random" in agg.notes[0]


# ---- MathVista ----------------------------------------------------------------------------------------------


def _mv(answer, choices=None, qtype="free_form", atype="text", precision=None):
    return Sample("1", {}, {"answer": answer, "choices": choices, "question_type": qtype, "answer_type": atype,
                            "precision": precision}, {})


def test_mathvista_rule_extraction():
    b = MV.MathVista()
    mc = _mv("8/11", ["3/11", "8/11", "6/11", "3/5"], "multi_choice")
    assert b.score("The correct answer is (B) 8/11.", mc)["score"] == 1.0
    assert b.score("Answer: 8/12", mc)["score"] == 1.0  # the most similar option, as MathVista normalises
    assert b.score("Answer: C", mc)["score"] == 0.0
    assert b.score("There are 5 apples.", _mv("5", atype="integer"))["score"] == 1.0
    assert b.score(r"\boxed{5.0}", _mv("5", atype="integer"))["score"] == 1.0
    assert b.score(r"so \boxed{1.449}", _mv("1.45", atype="float", precision=2))["score"] == 1.0
    assert b.score('The answer is "1.4".', _mv("1.45", atype="float", precision=2))["score"] == 0.0
    empty = b.score("◁think▷never closed", _mv("5", atype="integer"))
    assert empty["score"] == 0.0 and empty["parsed"] is False
    # the official normalisation makes even an empty answer the most similar (first shortest) option
    assert b.score("", _mv("3", ["3", "4", "5"], "multi_choice"))["score"] == 1.0
    assert b.score("1.500000e+00", _mv("1.5", atype="float", precision=1))["score"] == 1.0  # float() as it stands
    assert MV.normalize("1,000", None, "free_form", "integer", None) is None  # int(float("1,000")) fails there too
    assert b.score("It is 1,000.", _mv("1000", atype="integer"))["score"] == 1.0  # kvl's stand-in for GPT: last number
    assert "rule-extracted" in b.aggregate([{"score": 1.0}]).notes[0]


# ---- grounding ----------------------------------------------------------------------------------------------


def test_parse_point():
    assert parse_point("## Code:\n```python\npyautogui.click(x=0.25, y=0.5)\n```", 200, 100) == (0.25, 0.5)
    assert parse_point("pyautogui.click(x=110, y=55)", 200, 100) == (0.55, 0.55)  # pixels are normalised
    assert parse_point("◁think▷x=0.9, y=0.9◁/think▷click(x=0.1, y=0.2) then x=0.3, y=0.3", 1, 1) == (0.1, 0.2)
    assert parse_point("I would click the button", 100, 100) is None
    assert parse_point("", 100, 100) is None


def test_screenspot_v2_xywh_is_inclusive_at_x_plus_w_minus_1():
    # bbox [100, 50, 20, 10] xywh in a 200x100 image -> right edge 119 px = 0.595, bottom 59 px = 0.59
    s = Sample("1", {}, {"box": [0.5, 0.5, 119 / 200, 59 / 100], "width": 200, "height": 100})
    b = ScreenSpotV2()
    assert b.score("pyautogui.click(x=0.595, y=0.59)", s)["score"] == 1.0
    assert b.score("pyautogui.click(x=0.6, y=0.55)", s)["score"] == 0.0  # lmms-eval's x+w would accept this
    wrong = b.score("no coordinates", s)
    assert wrong["score"] == 0.0 and wrong["parsed"] is False


def test_screenspot_pro_refusal_items():
    pos = Sample("1", {}, {"box": [0.5, 0.5, 0.6, 0.6], "width": 200, "height": 100, "refusal": False})
    neg = Sample("2", {}, {"box": [0, 0, 0, 0], "width": 200, "height": 100, "refusal": True})
    b = ScreenSpotPro()
    assert b.score("pyautogui.click(x=0.6, y=0.6)", pos)["score"] == 1.0  # xyxy edges inclusive
    assert b.score("FAIL", pos)["score"] == 0.0
    assert b.score("## Action:\nThe target is not on screen.\n\n## Code:\nFAIL", neg)["score"] == 1.0
    assert b.score("pyautogui.click(x=0.5, y=0.5)", neg)["score"] == 0.0


def test_screenspot_v2_aggregate_text_icon():
    recs = [{"score": 1.0, "ui_type": "text", "group": "web"}, {"score": 0.0, "ui_type": "icon", "group": "web"},
            {"score": 1.0, "ui_type": "icon", "group": "mobile"}]
    agg = ScreenSpotV2().aggregate(recs)
    assert agg.metrics == {"accuracy": pytest.approx(200 / 3), "text_accuracy": 100.0, "icon_accuracy": 50.0}
    assert agg.breakdowns["group/ui_type"]["web/icon"] == {"n": 1, "score": 0.0}


def test_osworld_g_boxes_polygons_refusal():
    b = OSWorldG()

    def s(kind, coords):
        return Sample("1", {}, {"kind": kind, "coords": coords, "width": 100, "height": 100,
                                "refusal": kind == "refusal"}, {})

    box = s("bbox", [10, 10, 20, 20])  # xywh, inclusive at x+w
    assert b.score("click(x=0.3, y=0.3)", box)["score"] == 1.0
    assert b.score("click(x=0.31, y=0.3)", box)["score"] == 0.0
    tri = s("polygon", [0, 0, 100, 0, 0, 100])
    assert b.score("click(x=0.2, y=0.2)", tri)["score"] == 1.0
    assert b.score("click(x=0.8, y=0.8)", tri)["score"] == 0.0
    ref = s("refusal", [])
    assert b.score("FAIL", ref)["score"] == 1.0
    assert b.score("pyautogui.click(x=-1, y=-1)", ref)["score"] == 1.0
    assert b.score("pyautogui.click(x=0.5, y=0.5)", ref)["score"] == 0.0
    assert b.score("FAIL", box)["score"] == 0.0
    assert in_polygon(5, 5, [0, 0, 10, 0, 10, 10, 0, 10])


# ---- video ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,want", [
    ("The best answer is B.", "B"),
    ("Answer: (C) the red car", "A"),  # "Answer:" is no prefix of this list: the A of "Answer" comes first
    ("D", "D"),
    ("E", "E"),  # the reference looks for A-E whatever the number of options
    ("the man walks into the store and buys some bread and milk today", ""),  # > 10 words, no letter
    ("A man walks into a store and buys some bread and milk today", "A"),  # the reference's quirk: an article
    ("", ""),
])
def test_video_letter_extraction(text, want):
    assert first_letter_after_prefixes(text) == want


@pytest.mark.parametrize("text,want", [
    ("B", "B"),
    ("(C) because the car is red", "C"),
    ("I think the answer is D.", "D"),
    ("Option B: the dog", "B"),
    ("nothing here", ""),
    ("i choose: a dog, not the cat", ""),  # lower-case letters are no option
    ("A. maybe, but (B)", "A"),  # a standalone letter at the start outranks "(B)"
    ("It is A. maybe, but (B)", "B"),  # otherwise "(B)" outranks "A."
    ("Because of B and C", "C"),  # rank 9: a standalone letter at the end
    ("ABC", "C"),  # no shape matches: the last bare letter
])
def test_priority_mcq_extractor(text, want):
    assert extract_mcq_answer(text) == want


def test_video_scores_and_aggregates():
    s = Sample("q1", {}, {"options": ["a", "b", "c", "d"], "answer": "B"}, {})
    assert VideoMME().score("The best answer is B", s)["score"] == 1.0
    lvb = LongVideoBench().score("I cannot tell from these frames what happens at the end of it", s)
    assert lvb["fallback"] == "random" and lvb == LongVideoBench().score("I cannot tell from these frames what happens at the end of it", s)
    recs = [{"score": 1.0, "task_type": "count"}, {"score": 0.0, "task_type": "count"}] + \
           [{"score": 1.0, "task_type": "needle"}] * 3
    m = MLVU().aggregate(recs).metrics
    assert m["m_avg"] == 75.0 and m["accuracy"] == 80.0
    assert uniform_times(10.0, 4) == [2.0, 4.0, 6.0, 8.0]  # end points excluded


# ---- MMLongBench-Doc -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gt,pred,fmt,want", [
    ("3", "3.0", "Int", 1.0),
    ("3", "three", "Int", 0.0),
    ("0.25", "25%", "Float", 1.0),  # percent scaling
    ("12.5", "12.52", "Float", 1.0),  # within 1%
    ("12.5", "13", "Float", 0.0),
    ("apple pie", "Apple pies", "Str", 0.9),
    ("abc", "xyz", "Str", 0.0),
    ("abcd", "abxy", "Str", 0.0),  # exactly 0.5 counts 0 here (<= threshold), unlike DocVQA
    ("https://a.com", "https://a.co", "Str", 0.0),  # exact-match type: no partial credit
    ("2019-05", "2019-05", "Str", 1.0),
    ("['a', 'b']", "['b', 'a']", "List", 1.0),
    ("['a', 'b']", "['a']", "List", 0.0),
    ("['1', '2']", "['2', '1']", "List", 1.0),
    ("Not answerable", "Not answerable", "None", 1.0),
])
def test_mmlongbench_eval_score(gt, pred, fmt, want):
    assert LB.eval_score(gt, pred, fmt) == pytest.approx(want)


def test_mmlongbench_short_answer_and_f1():
    assert LB.short_answer("◁think▷…◁/think▷Answer: 42.") == "42."  # a number keeps its dot
    assert LB.short_answer("Answer: Paris.") == "Paris"
    assert LB.short_answer("not answerable.") == LB.NA
    recs = [{"score": 1.0, "gt": "x", "pred": "x"}, {"score": 0.0, "gt": "y", "pred": LB.NA},
            {"score": 1.0, "gt": LB.NA, "pred": LB.NA}, {"score": 0.0, "gt": LB.NA, "pred": "z"}]
    acc, f1 = LB.acc_f1(recs)
    # recall = 1/2 (answerable), precision = 1/2 (answered: x and z) -> F1 0.5
    assert acc == 0.5 and f1 == pytest.approx(0.5)


# ---- kvl-nano ------------------------------------------------------------------------------------------------


def test_nano_ocr_cer_and_structure():
    assert normalize_markdown("a  \n\n\n\nb\n") == "a\n\nb"
    s = Sample("1", {}, {"markdown": "# Title\n\nHello\n\n- item one\n- item two"})
    r = NanoOCR().score("# Title  \n\n\n\nHallo\n\n- item one\n", s)
    truth = normalize_markdown(s.target["markdown"])
    assert r["chars"] == len(truth) and r["edits"] == 1 + len("\n- item two")
    assert r["structure"] == pytest.approx(2 / 3)
    assert structure_recall("anything", "no structure here") is None
    agg = NanoOCR().aggregate([{"edits": 1, "chars": 10, "structure": 1.0}, {"edits": 3, "chars": 30, "structure": None}])
    assert agg.metrics == {"cer": 10.0, "structure": 100.0}


def test_nano_ground_accuracy_and_random_baseline():
    s = Sample("1", {}, {"box": [0.1, 0.1, 0.3, 0.3], "width": 100, "height": 50}, {"box_area": 0.04})
    assert NanoGround().score("pyautogui.click(x=0.2, y=0.2)", s)["score"] == 1.0
    assert NanoGround().score("pyautogui.click(x=20, y=10)", s)["score"] == 1.0  # pixels
    agg = NanoGround().aggregate([{"score": 1.0, "box_area": 0.04, "parsed": True},
                                  {"score": 0.0, "box_area": 0.16, "parsed": False}])
    assert agg.metrics["accuracy"] == 50.0 and agg.metrics["random_baseline"] == pytest.approx(10.0)
    assert agg.metrics["unparsable"] == 50.0
