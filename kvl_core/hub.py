"""Model specs: which checkpoint directory a user means, resolved offline.

A spec is a local checkpoint directory, or a Hugging Face repo id (`moonshotai/Kimi-VL-A3B-Instruct`,
optionally `@revision`) found in the local Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`,
else `~/.cache/huggingface/hub`; snapshot layout `models--org--name/snapshots/<commit>/`). Nothing
is ever downloaded. Where no spec is given: the `KVL_MODEL` environment variable, then `model = ...`
in the user config file (`$KVL_CONFIG`, else `~/.config/kvl/config.toml`), then the built-in
kvl-nano model that ships inside the package (kvl_core/assets/kvl-nano), so a fresh install works
offline. Built-in models are also addressed by name (`--model kvl-nano`).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from kvl_core.errors import KvlError

KNOWN_MODELS = {
    "moonshotai/Kimi-VL-A3B-Instruct": "general use, temperature 0.2",
    "moonshotai/Kimi-VL-A3B-Thinking-2506": "long reasoning, temperature 0.8",
    "moonshotai/Kimi-VL-A3B-Thinking": "long reasoning (first release), temperature 0.6",
}
HOW_TO_GET = (
    "no model configured: pass --model PATH_OR_REPO_ID, set KVL_MODEL, or put `model = \"...\"` in "
    "~/.config/kvl/config.toml. To get the real model (16.4B parameters, ~33 GB in bf16): "
    "`hf download moonshotai/Kimi-VL-A3B-Instruct` on a machine with internet, then "
    "--model moonshotai/Kimi-VL-A3B-Instruct (read from the local Hugging Face cache)"
)
# Small models of our own architecture shipped inside the package, loaded like any checkpoint.
ASSETS = Path(__file__).parent / "assets"
BUILTIN_MODELS = {
    "kvl-nano": "6.3M parameters, trained from scratch on generated documents by `kvl train --recipe nano`; "
                "reads clean rendered pages, with errors; cannot find controls on a screen",
}
DEFAULT_MODEL = "kvl-nano"
# What a built-in model was trained to do, when its kvl_model.json does not say: the verbs it may run
# when it stands in because nothing is configured. Any other verb refuses in one line (it would print
# fluent noise), unless the user names the model (`--model kvl-nano`).
BUILTIN_SKILLS = ("ocr", "ground")
SKILL_WORDS = {"ocr": "read documents to markdown (`kvl ocr`)",
               "ground": "point at a control on a screen (`kvl agent ground`)"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def user_config_path() -> Path:
    if os.environ.get("KVL_CONFIG"):
        return Path(os.environ["KVL_CONFIG"]).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".config") / "kvl" / "config.toml"


def user_config() -> dict:
    path = user_config_path()
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise KvlError(f"{path}: not valid TOML ({e})") from None


def configured_model_spec(spec: str | None = None) -> str | None:
    """The spec in force: explicit, else $KVL_MODEL, else the user config's `model`."""
    if spec:
        return spec
    if os.environ.get("KVL_MODEL"):
        return os.environ["KVL_MODEL"]
    model = user_config().get("model")
    return str(model) if model else None


def resolve_from_hf_cache(repo_id: str) -> Path | None:
    name, _, revision = repo_id.partition("@")
    repo_dir = hf_cache_dir() / ("models--" + name.replace("/", "--"))
    if not repo_dir.is_dir():
        return None
    revision = revision or "main"
    ref = repo_dir / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snap = repo_dir / "snapshots" / commit
    if snap.is_dir():
        return snap
    snaps = sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) if revision == "main" else []
    return snaps[-1] if snaps else None


def builtin_model(name: str) -> Path | None:
    """The folder of a built-in model, or None when it is unknown or its weights were not shipped."""
    path = ASSETS / name
    return path if name in BUILTIN_MODELS and (path / "config.json").exists() else None


def _builtin_meta(name: str) -> dict:
    """A built-in model's kvl_model.json (recipe, metrics, skills), or {} when absent or unreadable."""
    import json

    path = builtin_model(name)
    try:
        meta = json.loads((path / "kvl_model.json").read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def builtin_quality(name: str) -> str:
    """The held-out metrics the shipped weights were exported with (kvl_model.json), in words."""
    ev = _builtin_meta(name).get("eval", {})
    parts = []
    if "cer" in ev.get("ocr", {}).get("metrics", {}):
        parts.append(f"held-out OCR CER {ev['ocr']['metrics']['cer']:.1f}%")
    if "accuracy" in ev.get("ground", {}).get("metrics", {}) and "ground" in builtin_skills(name):
        g = ev["ground"]["metrics"]
        parts.append(f"click-in-box {g['accuracy']:.0f}% (random {g.get('random_baseline', 0):.1f}%)")
    return ", ".join(parts)


def builtin_skills(name: str = DEFAULT_MODEL) -> tuple[str, ...]:
    """The skills a built-in model was exported with (kvl_model.json "skills"), else BUILTIN_SKILLS."""
    skills = _builtin_meta(name).get("skills")
    return tuple(skills) if isinstance(skills, list) and skills else BUILTIN_SKILLS


def require_skill(spec: str | None, skill: str, verb: str) -> None:
    """Refuse `verb` in one line when the built-in model would stand in for it (nothing configured)
    and was never trained for `skill`. A configured or named model (kvl-nano by name included) always
    runs; an install without built-in weights is left to `resolve_model`'s own message."""
    if configured_model_spec(spec) is not None or builtin_model(DEFAULT_MODEL) is None:
        return
    skills = builtin_skills(DEFAULT_MODEL)
    if skill in skills:
        return
    can = " and ".join(SKILL_WORDS.get(s, s) for s in skills)
    raise KvlError(f"{verb} needs a real model: {DEFAULT_MODEL}, the built-in demo model, can only {can}; pass "
                   "--model PATH_OR_REPO_ID (e.g. moonshotai/Kimi-VL-A3B-Instruct), set KVL_MODEL, or use "
                   f"--backend openai --base-url URL (--model {DEFAULT_MODEL} runs it anyway)")


def default_notice(name: str = DEFAULT_MODEL) -> str:
    quality = builtin_quality(name)
    return (f"using {name}, the built-in demo model ({BUILTIN_MODELS[name]}"
            f"{'; ' + quality if quality else ''}); pass --model or set KVL_MODEL for a real checkpoint "
            "such as moonshotai/Kimi-VL-A3B-Instruct")


def resolve_model(spec: str | None = None) -> Path:
    """Spec (or the configured default, else the built-in kvl-nano) -> checkpoint directory, or a
    KvlError saying what to do."""
    spec = configured_model_spec(spec)
    if not spec:
        path = builtin_model(DEFAULT_MODEL)
        if path is None:
            raise KvlError(HOW_TO_GET)
        return path
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if spec in BUILTIN_MODELS:
        found = builtin_model(spec)
        if found is None:
            raise KvlError(f"{spec}: this install has no weights for the built-in model (build them with "
                           "`kvl train --recipe nano`)")
        return found
    if _REPO_ID.match(spec) and not spec.startswith((".", "/")):
        found = resolve_from_hf_cache(spec)
        if found is not None:
            return found
        raise KvlError(
            f"{spec}: not a local directory and not in the Hugging Face cache ({hf_cache_dir()}); "
            f"download it first (`hf download {spec.partition('@')[0]}`) or pass a checkpoint directory"
        )
    raise KvlError(f"{spec}: no such checkpoint directory")
