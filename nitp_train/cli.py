"""`nitp-train`: pre-train NTP / NITP models (`run`), tokenize corpora (`prepare`), list `presets`,
convert a GGUF model to a Hugging Face folder (`export`).

Multi-process: ``torchrun --nproc_per_node N -m nitp_train run CONFIG.yaml`` (DDP; FSDP2 with
``--set train.parallel=fsdp``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import typer

from nitp.errors import UserError, on_interrupt, user_errors

app = typer.Typer(
    help="Pre-train Hugging Face causal LMs with NTP or NITP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def run(
    config: Path | None = typer.Argument(
        None, help="YAML config (see configs/); omitted = defaults (tiny-dense, NITP)."
    ),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory [default: runs/<run_name>]."),
    steps: int | None = typer.Option(
        None, "--steps", help="Training steps (train.steps; clears train.tokens)."
    ),
    objective: str | None = typer.Option(None, "--objective", help="ntp or nitp."),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="Model preset (model.preset); for an overlay (configs/ablations/) also the recipe it applies to.",
    ),
    set_: List[str] = typer.Option(
        [], "--set", help="Override any config key: --set nitp.lambda=0.5 (repeatable)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --run-dir from its latest checkpoint."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved config (YAML, stdout) and plan (stderr); write nothing."
    ),
    world_size: int | None = typer.Option(
        None, "--world-size", min=1, help="Processes to plan for with --dry-run [default: 1]."
    ),
):
    """Train one model; writes RUN/config.yaml, RUN/metrics.jsonl and RUN/checkpoints/."""
    from .config import apply_plan, load_config, plan_summary
    from .config_model import as_config

    overrides = list(set_)
    if steps is not None:
        overrides += [f"train.steps={steps}", "train.tokens=null"]
    if objective is not None:
        overrides.append(f"objective={objective}")
    cfg = as_config(load_config(config, overrides, preset=preset))
    if dry_run:  # the plan on stderr, the resolved config (YAML) on stdout
        cfg, plan = apply_plan(cfg, world_size or 1)
        print(plan_summary(cfg, plan), file=sys.stderr)
        import yaml

        sys.stdout.write(yaml.safe_dump(cfg.model_dump(by_alias=True), sort_keys=False, allow_unicode=True))
        return
    if world_size is not None:
        raise UserError(f"--world-size {world_size}: only plans a --dry-run; launch with torchrun to train")
    from .trainer import train

    on_interrupt("the run keeps its last complete checkpoint; rerun with --resume to continue")
    train(cfg, run_dir or Path("runs") / cfg.run_name, resume=resume)


@app.command()
def prepare(
    out: Path = typer.Argument(..., help="Folder for train.bin / val.bin / tokenizer/ / meta.json."),
    corpus: str = typer.Option(
        "builtin", help="builtin, a .txt/.jsonl/.parquet file or folder, or a Hugging Face dataset name."
    ),
    tokenizer: str | None = typer.Option(
        None, help="Tokenizer folder or name; omitted = train a byte-level BPE."
    ),
    vocab_size: int = typer.Option(4096, help="Vocabulary of the trained BPE."),
    val_fraction: float = typer.Option(0.05, help="Share of documents held out for validation."),
    text_field: str = typer.Option(
        "text", help="Field / column holding the text (.jsonl, .parquet, datasets)."
    ),
    seed: int = typer.Option(0),
    workers: int | None = typer.Option(
        None, help="Tokenizer worker processes [default: one per core, at most 8; 0 = in process]."
    ),
    batch_docs: int = typer.Option(256, help="Documents per encode_batch call."),
):
    """Tokenize a corpus into memory-mapped shards, streaming and resumable (point data.prepared_dir at OUT to share it)."""
    settings = {k: v for k, v in locals().items() if k != "out"}  # the data.* options, as given
    from .config_model import check_value
    from .data import prepare as prepare_data

    for key, value in settings.items():
        check_value(f"data.{key}", value)
    on_interrupt("the preparation keeps its committed progress; rerun the same command to continue")
    prepare_data({**settings, "seq_len": 2}, out)


@app.command()
def export(
    gguf: Path = typer.Argument(..., help="A .gguf causal LM (e.g. SmolLM2-135M-Instruct.Q4_1.gguf)."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the float32 Hugging Face model."),
):
    """Dequantise a GGUF model into a plain float32 Hugging Face folder (config, safetensors, tokenizer)."""
    from nitp.loading import export_gguf
    from nitp.runs import is_gguf_file

    if not gguf.exists():
        raise UserError(f"{gguf}: no such file; give the path of a GGUF model file")
    if not is_gguf_file(gguf):
        raise UserError(f"{gguf}: not a .gguf file; give the path of a GGUF model file")
    on_interrupt(f"nothing was written to {out}; rerun the same command")
    print(export_gguf(gguf, out))


@app.command()
def presets(seq_len: int = typer.Option(2048, help="Sequence length for the FLOPs estimate.")):
    """Table of presets: parameters, active parameters, NITP target layer, lambda, predicted NITP FLOPs overhead."""
    from rich.console import Console
    from rich.table import Table

    from .flops import nitp_flops_per_token, training_flops_per_token
    from .models import PRESETS, count_parameters_from_spec, make_config, resolve_preset

    table = Table(title=f"NITP FLOPs overhead at sequence length {seq_len}")
    for col in "preset,layers,hidden,params,active,target layer,lambda,NITP FLOPs overhead".split(","):
        table.add_column(col, no_wrap=True)
    for name in PRESETS:
        spec = resolve_preset(name)
        counts = count_parameters_from_spec(spec)
        base = training_flops_per_token(make_config(spec), seq_len)
        overhead = f"{100 * nitp_flops_per_token(spec['hidden_size']) / base:.2f}%"
        table.add_row(
            name,
            str(spec["num_hidden_layers"]),
            str(spec["hidden_size"]),
            _human(counts["total"]),
            _human(counts["active"]),
            f"{spec['target_layer']}/{spec['num_hidden_layers']}",
            str(spec["lambda"]),
            overhead,
        )
    Console().print(table)


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def main() -> None:
    with user_errors():
        app()


if __name__ == "__main__":
    main()
