"""A short HF ``Trainer`` / TRL ``SFTTrainer`` run of any causal LM through ``wrap_model``.

It is the recipe of docs/dropin.md run end to end on real text (the built-in corpus of
``nitp_train.data``), used by the tests and for the SmolLM2-135M numbers in that doc::

    python -m nitp_train.dropin.demo MODEL_DIR_OR_GGUF OUT_DIR --steps 20 [--trainer sft]

``OUT_DIR/final`` is the exported model (plain HF folder + ``nitp_head.safetensors``);
``OUT_DIR/log_history.json`` the Trainer's log lines with the NITP callback's numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from nitp.io import atomic_write_json


def token_rows(tokenizer, texts: list[str], seq_len: int, n_rows: int) -> list[list[int]]:
    """``n_rows`` rows of real text tokens; every 4th row is shortened (so batches carry padding)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if len(stream) >= n_rows * seq_len:
            break
    rows = [stream[i * seq_len : (i + 1) * seq_len] for i in range(len(stream) // seq_len)][:n_rows]
    return [r[: seq_len - (seq_len // 4) * (i % 4 == 3)] for i, r in enumerate(rows)]


@dataclass(frozen=True)
class DemoSettings:
    """How the demo trains: ``steps`` optimizer steps of ``batch_size`` x ``grad_accum`` rows of
    ``seq_len`` tokens at a constant ``lr``, through HF ``Trainer`` (``trainer="hf"``) or TRL
    ``SFTTrainer`` (``"sft"``, packed, padding-free); the NITP callback measures the geometry every
    ``geometry_every`` steps; ``seed`` is the Trainer's."""

    steps: int = 20
    seq_len: int = 128
    batch_size: int = 4
    grad_accum: int = 2
    lr: float = 1e-4
    trainer: str = "hf"
    geometry_every: int = 5
    seed: int = 0


def run_demo(
    model,
    tokenizer,
    out_dir: str | Path,
    settings: DemoSettings | None = None,
    *,
    texts: list[str] | None = None,
    wrap: dict | None = None,
    **overrides,
) -> dict:
    """Train ``model`` with NITP as ``settings`` say (fields of :class:`DemoSettings` given as
    keywords override it); export to ``out_dir/final``. ``texts``: the documents (default: the
    built-in corpus); ``wrap``: keywords of ``wrap_model``.

    Returns ``{"log_history": [...], "export": path, "wrapped": NITPWrapped, "trainer": Trainer}``.
    """
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from nitp_train.corpus import builtin_documents
    from nitp_train.dropin import wrap_model
    from nitp_train.dropin.hf import add_nitp_callback

    demo = dataclasses.replace(settings or DemoSettings(), **overrides)
    out_dir = Path(out_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = texts if texts is not None else builtin_documents()
    n_rows = demo.steps * demo.batch_size * demo.grad_accum
    wrapped = wrap_model(model, **(wrap or {}))
    common = dict(
        output_dir=str(out_dir),
        max_steps=demo.steps,
        per_device_train_batch_size=demo.batch_size,
        gradient_accumulation_steps=demo.grad_accum,
        learning_rate=demo.lr,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_steps=demo.steps,
        save_total_limit=1,
        report_to=[],
        seed=demo.seed,
        use_cpu=True,
        disable_tqdm=True,
    )
    if demo.trainer == "hf":
        data = Dataset.from_dict({"input_ids": token_rows(tokenizer, texts, demo.seq_len, n_rows)})
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        t = Trainer(
            model=wrapped, args=TrainingArguments(**common), train_dataset=data, data_collator=collator
        )
    elif demo.trainer == "sft":
        from trl import SFTConfig, SFTTrainer

        data = Dataset.from_dict({"text": texts[: max(n_rows, 8)]})
        args = SFTConfig(**common, max_length=demo.seq_len, packing=True, dataset_num_proc=None)
        t = SFTTrainer(model=wrapped, args=args, train_dataset=data, processing_class=tokenizer)
    else:
        raise ValueError(f"trainer must be 'hf' or 'sft', got {demo.trainer!r}")
    add_nitp_callback(t, geometry_every=demo.geometry_every)
    t.train()
    export = out_dir / "final"
    wrapped.save_pretrained(export)
    tokenizer.save_pretrained(export)
    history = t.state.log_history
    atomic_write_json(out_dir / "log_history.json", history)
    return {"log_history": history, "export": export, "wrapped": wrapped, "trainer": t}


def drop_gguf_marker(model):
    """A model read from a ``.gguf`` holds plain float32 weights (dequantized on load) but keeps the
    GGUF ``quantization_config``, and ``Trainer`` refuses to train "quantized" models; drop the
    marker (only for ``quant_method == "gguf"``) so it trains and exports as an ordinary model."""
    qc = getattr(model.config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if str(method).lower().endswith("gguf"):
        model.hf_quantizer, model.is_quantized = None, False
        del model.config.quantization_config
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="HF model folder, checkpoint, run dir or .gguf file")
    p.add_argument("out_dir")
    options = [f for f in dataclasses.fields(DemoSettings) if f.name != "seed"]  # the seed is the Trainer's
    for f in options:  # --steps, --seq-len, --batch-size, --grad-accum, --lr, --trainer, --geometry-every
        choices = ("hf", "sft") if f.name == "trainer" else None
        p.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, choices=choices
        )
    a = p.parse_args(argv)

    import torch

    from nitp.errors import user_errors
    from nitp.loading import load_model, load_tokenizer

    with user_errors():
        torch.manual_seed(0)
        model = drop_gguf_marker(load_model(a.model, dtype="float32"))
        tokenizer = load_tokenizer(a.model)
        settings = DemoSettings(**{f.name: getattr(a, f.name) for f in options})
        result = run_demo(model, tokenizer, a.out_dir, settings)
        keys = ("step", "loss", "loss_ntp", "loss_nitp", "nitp_grad_share", "erank", "anisotropy")
        for line in result["log_history"]:
            if "loss" in line:
                print(json.dumps({k: line[k] for k in keys if k in line}))
        print(f"exported: {result['export']}")


if __name__ == "__main__":
    main()
