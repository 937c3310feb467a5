"""The config schema: every bad value is one line naming its key, exit 2, nothing on disk."""

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nitp.errors import UserError
from nitp_train.cli import main
from nitp_train.config import DEFAULTS, configs_dir, load_config
from nitp_train.schema import SCHEMA
from tests.helpers import run_main

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


def test_the_table_covers_every_default_key():
    keys = {f"{s}.{k}" for s, v in DEFAULTS.items() if isinstance(v, dict) for k in v} - {"model.preset"}
    keys |= {k for k, v in DEFAULTS.items() if not isinstance(v, dict)}
    assert keys - set(SCHEMA) == set()


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
