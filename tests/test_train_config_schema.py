"""The config schema: every bad value is one line naming its key, exit 2, nothing on disk."""

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nitp.errors import UserError
from nitp_train.cli import main
from nitp_train.config import RECIPES, _flatten, _read_chain, configs_dir, load_config
from nitp_train.config_model import DEFAULTS, check_shift, check_value, keys_table, leaf_fields
from nitp_train.data import FINGERPRINT_DEFAULTS
from nitp_train.models import PRESETS
from tests.helpers import run_main

ROOT = Path(__file__).resolve().parent.parent
TYPED_KEYS = [key for key, _ in leaf_fields() if key != "model"]

# (YAML text of a config based on tiny-nitp, the key the message must name)
BAD_CONFIGS = [
    ("train: {lr: fast}", "train.lr"),
    ("data: {seq_len: x}", "data.seq_len"),
    ("nitp: {start_step: soon}", "nitp.start_step"),
    ("train: {decay_type: bogus}", "train.decay_type"),
    ("checkpoint: {every: 0}", "checkpoint.every"),
    ("log: {every: 0}", "log.every"),
    ("train: {steps: 0}", "train.steps"),
    ("train: {steps: 1.5}", "train.steps"),
    ("train: {steps: 100000000000000000000}", "train.steps"),
    ("train: {steps: true}", "train.steps"),
    ("train: {batch_size: -1}", "train.batch_size"),
    ("train: {global_batch: ''}", "train.global_batch"),
    ("train: {tokens: .inf}", "train.tokens"),
    ("train: {lr: .nan}", "train.lr"),
    ("train: {lr: 0}", "train.lr"),
    ("train: {warmup_steps: -5}", "train.warmup_steps"),
    ("train: {warmup_start_ratio: 1.5}", "train.warmup_start_ratio"),
    ("train: {decay_ratio: 2}", "train.decay_ratio"),
    ("train: {min_lr_ratio: -0.1}", "train.min_lr_ratio"),
    ("train: {betas: [0.9]}", "train.betas"),
    ("train: {betas: [0.9, 1.0]}", "train.betas"),
    ("train: {eps: 0}", "train.eps"),
    ("train: {grad_clip: 'üñí'}", "train.grad_clip"),
    ("train: {device: tpu}", "train.device"),
    ("train: {compile: 'yes please'}", "train.compile"),
    ("train: {threads: 0}", "train.threads"),
    ("nitp: {lambda: -1}", "nitp.lambda"),
    ("nitp: {lambda: [1]}", "nitp.lambda"),
    ("nitp: {shift: true}", "nitp.shift"),
    ("nitp: {shift: 2}", "nitp.shift"),
    ("nitp: {stop_grad: 1}", "nitp.stop_grad"),
    ("nitp: {target_layer: shallow}", "nitp.target_layer"),
    ("nitp: {projector: mlp}", "nitp.projector"),
    ("cos_reg: {weight: 1e400}", "cos_reg.weight"),
    ("data: {corpus: ''}", "data.corpus"),
    ("data: {val_fraction: 0}", "data.val_fraction"),
    ("data: {vocab_size: 10}", "data.vocab_size"),
    ("data: {workers: -2}", "data.workers"),
    ("data: {text_field: null}", "data.text_field"),
    ("log: {eval_batches: 0}", "log.eval_batches"),
    ("checkpoint: {keep_last: -1}", "checkpoint.keep_last"),
    ("seed: -1", "seed"),
    ("run_name: 'a/b'", "run_name"),
    ("run_name: '   '", "run_name"),
    ("objective: 日本語", "objective"),
    ("model: {preset: tiny-dense, hidden_size: big}", "model.hidden_size"),
    ("model: {preset: tiny-dense, num_hidden_layers: -3}", "model.num_hidden_layers"),
    ("model: {preset: tiny-dense, tie_word_embeddings: 0}", "model.tie_word_embeddings"),
    ("model: 5", "model"),
    ("train: 3", "train"),
]


@pytest.mark.parametrize("text, key", BAD_CONFIGS, ids=[k + ":" + t for t, k in BAD_CONFIGS])
def test_bad_config_value_is_one_line_and_writes_nothing(text, key, tmp_path, capsys, monkeypatch):
    cfg_dir, work = tmp_path / "cfg", tmp_path / "work"
    cfg_dir.mkdir()
    work.mkdir()
    config = cfg_dir / "bad.yaml"
    config.write_text(f"base: {configs_dir() / 'tiny-nitp.yaml'}\n{text}\n")
    monkeypatch.chdir(work)
    code, out, err = run_main(
        main, "nitp-train", ["run", config, "--run-dir", work / "run"], monkeypatch, capsys
    )
    err = err.strip()
    assert code == 2, (text, err)
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
    assert key in err, (key, err)
    assert list(work.iterdir()) == [], f"{text}: something was written"


def test_every_key_has_a_description_and_a_default():
    keys = dict(leaf_fields())
    assert (
        len(keys) == 63  # train.loss_chunk folded into train.loss_impl
        and "nitp.lambda" in keys
        and "log.probe_every" in keys
        and "log.eval_points" in keys
        and "train.betas" in keys
    )
    for key, field in keys.items():
        assert field.description and len(field.description) > 8, key
        assert not field.is_required(), key
    flat = _flatten(DEFAULTS)
    assert set(flat) - {"model.preset"} == set(keys) - {"model"}  # the dump has exactly these keys


@pytest.mark.parametrize("key", TYPED_KEYS)
def test_a_wrong_type_for_each_key_is_one_line_naming_key_and_value(key):
    with pytest.raises(UserError) as e:
        load_config("tiny-nitp", [f"{key}=[true, x]"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{key}=[True, 'x']: "), msg
    assert f"--set {key}=" in msg, msg  # the fix
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        check_value(key, [True, "x"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("nitp.lamda=1", "unknown config key 'nitp.lamda' (did you mean nitp.lambda?)"),
        ("trian.lr=1", "unknown config key 'trian' (did you mean train?)"),
        ("train.lr.x=1", "train.lr={'x': 1}: must be a number > 0"),
        ("nitp=3", "config key 'nitp' must be a mapping"),
        ("model=5", "config key 'model'=5: must be a mapping"),
        ("nitp.shift=", "nitp.shift=None: must be given"),
        ("nitp.shift=1.0", "nitp.shift=1.0: use 1 or 0"),
        ("train.steps=0", "train.steps=0: must be an integer from 1 to 1,000,000,000,000"),
        ("train.lr=-1", "train.lr=-1: must be a number > 0"),
        ("model.hidden_size=abc", "model.hidden_size='abc': must be an integer >= 0"),
        ("model.preset=", "model.preset=None: must be given"),
    ],
)
def test_messages_name_the_key_the_value_and_the_fix(override, message):
    with pytest.raises(UserError) as e:
        load_config("tiny-nitp", [override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_pydantic_errors_never_reach_the_user():
    from pydantic import ValidationError

    for override in ("train.betas={a: 1}", "nitp.target_layer={}", "log=[1]", "data.corpus=7"):
        try:
            load_config("tiny-nitp", [override])
        except UserError as e:
            assert "validation error" not in str(e) and "\n" not in str(e), str(e)
        except ValidationError as e:  # pragma: no cover - the failure this test is for
            pytest.fail(f"{override}: raw pydantic error: {e}")
        else:
            pytest.fail(f"{override}: accepted")


def test_a_float_key_reads_an_integer_as_a_float_and_keeps_ints_ints():
    cfg = load_config("tiny-nitp", ["train.lr=1", "nitp.lambda=2", "train.steps=7"])
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert isinstance(cfg["nitp"]["lambda"], float) and type(cfg["train"]["steps"]) is int


def test_shift_has_one_rule_for_the_config_and_the_dropin():
    assert check_shift(0) == 0 and check_shift(1) == 1
    for bad in (2, -1, True, 1.0, "1", None):
        with pytest.raises(UserError, match="use 1 or 0"):
            check_shift(bad)
        with pytest.raises(UserError, match="nitp.shift"):
            check_value("nitp.shift", bad)


def test_data_fingerprint_defaults_are_the_resolved_default_config():
    data = load_config()["data"]
    assert FINGERPRINT_DEFAULTS == {k: data[k] for k in FINGERPRINT_DEFAULTS}
    assert set(FINGERPRINT_DEFAULTS) == {
        "corpus",
        "text_field",
        "tokenizer",
        "vocab_size",
        "val_fraction",
        "seed",
    }


def test_paper_recipe_numbers_live_only_in_the_presets():
    recipe_keys = {"nitp.target_layer", "nitp.lambda", "train.lr", "train.global_batch", "train.tokens"}
    for preset, name in RECIPES.items():
        if PRESETS[preset].get("tokens") is None:
            continue
        stated = set().union(*(_flatten(layer) for layer in _read_chain(configs_dir() / name)))
        assert not stated & recipe_keys, (name, stated & recipe_keys)
        cfg = load_config(configs_dir() / name)
        spec = PRESETS[preset]
        assert (cfg["train"]["global_batch"], cfg["train"]["tokens"], cfg["train"]["lr"]) == (
            spec["global_batch"],
            spec["tokens"],
            spec["lr"],
        )
        assert (cfg["nitp"]["target_layer"], cfg["nitp"]["lambda"]) == (spec["target_layer"], spec["lambda"])


def test_the_key_table_in_the_docs_is_generated_from_the_model():
    text = (ROOT / "docs" / "contracts.md").read_text(encoding="utf-8")
    table = text.split("<!-- config-keys:start -->\n")[1].split("<!-- config-keys:end -->")[0]
    assert table == keys_table(), "docs/contracts.md key table is stale: run `make docs`"


FUZZED = ["train.lr", "train.steps", "data.seq_len", "nitp.lambda", "nitp.start_step", "log.every"]
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(FUZZED), value=values)
def test_fuzzed_values_resolve_or_name_the_key(key, value):
    """Any value either resolves to a config that holds it or raises a UserError naming the key."""
    section, leaf = key.split(".")
    override = f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
    try:
        cfg = load_config("tiny-nitp", [override])
    except UserError as e:
        assert key in str(e) and "\n" not in str(e), str(e)
        return
    got = cfg[section][leaf]
    assert isinstance(got, (int, float)) and not isinstance(got, bool) and math.isfinite(got)
