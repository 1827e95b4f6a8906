"""Model-spec resolution: local dirs, the offline HF cache layout, env and user config, and the no-model message."""

import pytest

from kvl_core import hub
from kvl_core.errors import KvlError


@pytest.fixture
def env(tmp_path, monkeypatch):
    for var in ("KVL_MODEL", "HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KVL_CONFIG", str(tmp_path / "kvl.toml"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path


def make_snapshot(root, repo, commit, ref="main"):
    repo_dir = root / "hf" / "hub" / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit + "\n")
    return snap


def test_local_directory_wins(env):
    (env / "ckpt").mkdir()
    assert hub.resolve_model(str(env / "ckpt")) == env / "ckpt"


def test_repo_id_resolves_through_refs_and_revisions(env):
    main = make_snapshot(env, "moonshotai/Kimi-VL-A3B-Instruct", "a" * 40)
    other = make_snapshot(env, "moonshotai/Kimi-VL-A3B-Instruct", "b" * 40, ref="v2")
    assert hub.resolve_model("moonshotai/Kimi-VL-A3B-Instruct") == main
    assert hub.resolve_model("moonshotai/Kimi-VL-A3B-Instruct@v2") == other
    assert hub.resolve_model("moonshotai/Kimi-VL-A3B-Instruct@" + "b" * 40) == other


def test_hf_hub_cache_overrides_hf_home(env, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(env / "hf" / "hub"))
    monkeypatch.setenv("HF_HOME", str(env / "elsewhere"))
    snap = make_snapshot(env, "org/model", "c" * 40)
    assert hub.resolve_model("org/model") == snap


def test_env_then_user_config(env, monkeypatch):
    (env / "a").mkdir()
    (env / "b").mkdir()
    (env / "kvl.toml").write_text(f'model = "{env / "b"}"\n')
    assert hub.resolve_model() == env / "b"
    monkeypatch.setenv("KVL_MODEL", str(env / "a"))
    assert hub.resolve_model() == env / "a"


def test_missing_model_says_how_to_get_one(env, monkeypatch):
    monkeypatch.setattr(hub, "ASSETS", env / "no-assets")  # an install without the built-in weights
    with pytest.raises(KvlError, match="no model configured.*16.4B parameters"):
        hub.resolve_model()
    with pytest.raises(KvlError, match="not in the Hugging Face cache"):
        hub.resolve_model("someone/absent-model")
    with pytest.raises(KvlError, match="no such checkpoint directory"):
        hub.resolve_model("./nope")


def test_broken_user_config_is_named(env):
    (env / "kvl.toml").write_text("model = [unclosed\n")
    with pytest.raises(KvlError, match="kvl.toml: not valid TOML"):
        hub.resolve_model()


def test_from_pretrained_accepts_a_cached_repo_id(env, tiny_dir):
    import shutil

    from kvl_core.checkpoint import resolve_checkpoint_dir
    snap = make_snapshot(env, "moonshotai/Kimi-VL-A3B-Instruct", "d" * 40)
    shutil.copy(tiny_dir / "config.json", snap / "config.json")
    assert resolve_checkpoint_dir("moonshotai/Kimi-VL-A3B-Instruct") == snap


def test_builtin_model_is_the_default_and_has_a_name(env, monkeypatch):
    assets = env / "assets"
    (assets / "kvl-nano").mkdir(parents=True)
    (assets / "kvl-nano" / "config.json").write_text("{}")
    monkeypatch.setattr(hub, "ASSETS", assets)
    assert hub.resolve_model() == assets / "kvl-nano"
    assert hub.resolve_model("kvl-nano") == assets / "kvl-nano"
    (env / "mine").mkdir()
    monkeypatch.setenv("KVL_MODEL", str(env / "mine"))
    assert hub.resolve_model() == env / "mine"  # anything configured wins over the built-in


def test_builtin_name_without_weights_says_how_to_build_them(env, monkeypatch):
    monkeypatch.setattr(hub, "ASSETS", env / "no-assets")
    with pytest.raises(KvlError, match="kvl-nano: this install has no weights.*--recipe nano"):
        hub.resolve_model("kvl-nano")
