"""Reward checkers, the reward config file and k1.5's length reward, each against hand-worked cases."""

from __future__ import annotations

from fractions import Fraction

import pytest

from kvl_core.errors import KvlError
from kvl_core.training.rewards import (
    CHECKERS, RewardConfig, extract_choice, last_boxed, last_number, length_rewards, load_reward_config,
    normalize_text, parse_number, register_checker,
)

R = RewardConfig()


@pytest.mark.parametrize("answer,truth,want", [
    ("Paris", "paris", 1.0),
    ("  Paris. ", "Paris", 1.0),
    ('"New   York"', "new york", 1.0),
    ("$x+1$", "x+1", 1.0),
    ("**blue**", "blue", 1.0),
    ("Pariss", "Paris", 0.0),
    ("Paris is the capital", "Paris", 0.0),
    ("red", ["blue", "red"], 1.0),
    ("", "x", 0.0),
])
def test_exact(answer, truth, want):
    assert R.check("exact", answer, truth) == want


def test_exact_case_sensitive_option():
    cfg = RewardConfig()
    cfg.options["exact"]["case_sensitive"] = True
    assert cfg.check("exact", "paris", "Paris") == 0.0
    assert cfg.check("exact", "Paris", "Paris") == 1.0


@pytest.mark.parametrize("answer,truth,want", [
    ("42", "42", 1.0),
    ("The answer is 42.", "42", 1.0),
    ("first 3, then 7", "7", 1.0),  # the last number is the answer
    ("first 7, then 3", "7", 0.0),
    ("1,234", "1234", 1.0),
    ("0.5", "1/2", 1.0),
    ("3/4", "0.75", 1.0),
    ("-3.5", "-3.50", 1.0),
    ("50%", "0.5", 1.0),
    ("1e3", "1000", 1.0),
    ("0.3333333", "1/3", 1.0),  # within rel_tol 1e-6
    ("0.33", "1/3", 0.0),
    ("no number here", "1", 0.0),
    ("x2", "2", 0.0),  # part of an identifier, not a number
    ("7", 7, 1.0),  # numeric ground truths are fine
])
def test_numeric(answer, truth, want):
    assert R.check("numeric", answer, truth) == want


@pytest.mark.parametrize("answer,truth,want", [
    ("B", "B", 1.0),
    ("(b)", "B", 1.0),
    ("C. because the figure shows it", "C", 1.0),
    ("The answer is (D).", "D", 1.0),
    ("Answer: A", "A", 1.0),
    ("I first thought B, but the answer is C", "C", 1.0),
    ("I pick C because", "C", 1.0),
    ("B", "C", 0.0),
    ("maybe B or C", "C", 0.0),  # ambiguous: no reward
    ("nothing", "A", 0.0),
])
def test_choice(answer, truth, want):
    assert R.check("choice", answer, truth) == want


def test_choice_respects_the_option_letters():
    assert extract_choice("E", "ABCD") is None
    assert extract_choice("the answer is e", "ABCDE") == "E"


@pytest.mark.parametrize("answer,truth,want", [
    (r"so \boxed{42}", "42", 1.0),
    (r"\boxed{1} then \boxed{2}", "2", 1.0),  # the last box counts
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{\dfrac{3}{4}}", r"\frac{3}{4}", 1.0),
    (r"\boxed{x^{2}+1}", "x^2+1", 1.0),
    (r"\boxed{\text{Blue}}", "blue", 1.0),
    (r"\boxed{41}", "42", 0.0),
    ("42", "42", 0.0),  # no box, no reward
    (r"\boxed{42", "42", 0.0),  # never closed
])
def test_boxed(answer, truth, want):
    assert R.check("boxed", answer, truth) == want


def test_helpers():
    assert normalize_text("  'A  b'. ") == "a b"
    assert parse_number("1,000.5") == Fraction(2001, 2)
    assert parse_number("abc") is None and parse_number("1/0") is None
    assert last_number("a 1 b -2.5 c") == Fraction(-5, 2)
    assert last_boxed(r"\boxed{a{b}c}") == "a{b}c"


def test_unknown_checker_is_an_error():
    with pytest.raises(KvlError, match="unknown checker 'nope'"):
        R.check("nope", "1", "1")


def test_plugged_in_checker():
    @register_checker("starts_with", {"n": 1})
    def starts_with(answer, truth, options):
        return answer[: options["n"]] == str(truth)[: options["n"]]

    try:
        assert RewardConfig().check("starts_with", "abc", "axe") == 1.0
        assert RewardConfig().check("starts_with", "abc", "bxe") == 0.0
    finally:
        CHECKERS.pop("starts_with")


def test_length_reward_by_hand():
    # λ = 0.5 − (len − 2)/(6 − 2): [0.5, 0, −0.5]; correct keep λ, wrong get min(0, λ)
    assert length_rewards([2, 4, 6], [1, 1, 1]) == [0.5, 0.0, -0.5]
    assert length_rewards([2, 4, 6], [0, 0, 0]) == [0.0, 0.0, -0.5]
    assert length_rewards([2, 4, 6], [1, 0, 0]) == [0.5, 0.0, -0.5]
    assert length_rewards([3, 5], [0, 1]) == [0.0, -0.5]
    assert length_rewards([4, 4, 4], [1, 0, 1]) == [0.0, 0.0, 0.0]


def test_reward_config_file(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{\n "default_checker": "numeric",\n "numeric": {"rel_tol": 0.01},\n "length_weight": 0.5\n}\n')
    cfg = load_reward_config(p)
    assert cfg.default_checker == "numeric" and cfg.length_weight == 0.5
    assert cfg.check(None, "3.14", "3.1416") == 1.0  # 1% tolerance, numeric by default
    assert load_reward_config(None).default_checker == "exact"


@pytest.mark.parametrize("text,match", [
    ('{\n "default_checker": "numeric",\n "length_weight": 0.5,,\n}', r"r\.json:3: not valid JSON"),
    ('{\n "default_checker": "fuzzy"\n}', r"r\.json:2: unknown checker 'fuzzy'"),
    ('{\n "numeric": {\n  "tolerance": 1\n }\n}', r"r\.json:3: checker 'numeric' has no option 'tolerance'"),
    ('{\n "numeric": {\n  "rel_tol": "small"\n }\n}', r"r\.json:3: option numeric\.rel_tol must be a float"),
    ('{\n "length_weight": -1\n}', r"r\.json:2: 'length_weight' must be a number >= 0"),
    ('{\n "lenght_weight": 1\n}', r"r\.json:2: unknown key 'lenght_weight'"),
    ('[1, 2]', r"r\.json:1: expected a JSON object"),
])
def test_bad_reward_config_names_file_and_line(tmp_path, text, match):
    p = tmp_path / "r.json"
    p.write_text(text)
    with pytest.raises(KvlError, match=match) as e:
        load_reward_config(p)
    assert "\n" not in str(e.value)


def test_missing_reward_config_file(tmp_path):
    with pytest.raises(KvlError, match="no such file"):
        load_reward_config(tmp_path / "none.json")
