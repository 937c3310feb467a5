"""Frozen hidden states as sentence embeddings, scored on MTEB (the paper's second evidence).

A text's embedding is the masked mean (or last / EOS token) of one layer's hidden states of a
frozen model, L2-normalised; no fine-tuning, no prompt. mteb's own tasks and evaluators score
it (``mteb.evaluate``); this module supplies the encoder and turns mteb's results into a nitp
result record (docs/contracts.md, kind ``mteb``).

Pooling, for hidden states ``h`` [B, T, D] of layer ``layer`` and attention mask ``m`` [B, T]::

    mean:  e_b = sum_t m_bt h_bt / max(sum_t m_bt, 1e-9)       (sentence-transformers' Pooling)
    last:  e_b = h_{b, n_b - 1}            n_b = number of valid tokens (right padding)
    eos:   an EOS token is appended to every text, then as ``last``
    then   e_b <- e_b / max(||e_b||_2, 1e-12)                   (sentence-transformers' Normalize)

Layers: 0 = token embeddings (the input of block 1), k = output of block k, -1 = the last hidden
state (after the final norm: the vector fed to the LM head; for encoders such as MiniLM, the
last layer's output). The same numbering as the NITP target layer (docs/contracts.md).

Example
-------
>>> from nitp_eval.embed import HiddenStateEncoder, run_mteb
>>> enc = HiddenStateEncoder("runs/tiny/checkpoints/step_000500")       # doctest: +SKIP
>>> enc.encode_texts(["a cat", "a dog"]).shape                          # doctest: +SKIP
(2, 128)
>>> run_mteb(["runs/ntp", "runs/nitp"], suite="offline")                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from nitp import layers as layers_lib
from nitp.errors import UserError
from nitp.records import default_record_path, library_versions, make_record, read_record, write_record
from nitp.runs import checkpoint_info

from .embed_data import (
    PAPER_GROUPS,
    SUITES,
    apply_data_dir,
    export_hint,
    group_of,
    resolve_tasks,
    use_offline_hub,
)

POOLINGS = ("mean", "last", "eos")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")
GROUP_ORDER = list(PAPER_GROUPS)  # Classification, STS, Retrieval/dup


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r} (choose one of: {', '.join(POOLINGS)})")
    return pooling


# ----------------------------------------------------------------------------- pooling
def pool_hidden_states(hidden, mask, pooling: str = "mean"):
    """Pool token states into one L2-normalised vector per text.

    Parameters
    ----------
    hidden : torch.Tensor [B, T, D], any float dtype (pooled in float32)
    mask : torch.Tensor [B, T], 1 for valid tokens, 0 for padding; right padding (valid tokens
        first), every row with at least one valid token
    pooling : "mean" (masked mean) | "last" / "eos" (the last valid token)

    Returns
    -------
    torch.Tensor [B, D] float32, unit L2 norm per row.
    """
    import torch
    import torch.nn.functional as F

    hidden = hidden.float()
    mask = mask.to(hidden.dtype)
    if pooling == "mean":
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
    elif pooling in ("last", "eos"):
        last = mask.sum(1).long() - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    else:
        raise UserError(f"unknown pooling {pooling!r} (choose one of: {', '.join(POOLINGS)})")
    return F.normalize(pooled, p=2, dim=-1)


# ----------------------------------------------------------------------------- the encoder
class _StopForward(Exception):
    """Raised by the layer hook once the wanted layer is computed: later blocks are skipped."""


class HiddenStateEncoder:
    """mteb's encoder protocol over one layer of a frozen Hugging Face model.

    Works with this project's checkpoints (decoder LMs; ``AutoModel`` loads the backbone without
    the LM head) and with any Hugging Face encoder folder. Texts of one ``encode`` call are
    de-duplicated, tokenized once, run in batches sorted by length (little padding) and returned
    in the original order. bf16 on GPU, float32 on CPU; pooling is always float32.

    Parameters
    ----------
    model_path : a local model folder (config.json, weights, tokenizer files)
    pooling : "mean" | "last" | "eos"
    layer : -1 (last hidden state) or 0..L (see the module docstring)
    device : "cpu", "cuda", "cuda:1", ...; None picks cuda when available
    batch_size : texts per forward pass (mteb's ``encode_kwargs["batch_size"]`` wins)
    name, revision : mteb's cache key of this model (``run_mteb`` uses the checkpoint's
        weights hash as revision, so two checkpoints never share cached scores)
    max_length : token limit; default the smallest of sentence-transformers' ``max_seq_length``
        (sentence_bert_config.json), the tokenizer's ``model_max_length`` and the model's
        ``max_position_embeddings``
    log : where notes go (stderr)
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        pooling: str = "mean",
        layer: int = -1,
        device: str | None = None,
        batch_size: int = 32,
        name: str | None = None,
        revision: str | None = None,
        max_length: int | None = None,
        log: Callable[[str], None] = _stderr,
    ) -> None:
        import torch

        self.path = Path(model_path)
        self.pooling = check_pooling(pooling)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
        self.log = log
        text_config = _text_config(self.path)
        self.num_layers = int(text_config.num_hidden_layers)
        self.layer = check_layer(layer, self.num_layers, self.path)
        self.tokenizer = self._load_tokenizer()
        self.max_length = max_length or self._default_max_length(text_config)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = self._load_model()
        self.hidden_size = int(text_config.hidden_size)
        self.mteb_model_meta = self._model_meta(name or f"nitp-local/{self.path.name}", revision)

    # --- loading -----------------------------------------------------------------------------
    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        check_tokenizer_files(self.path)
        try:
            tok = AutoTokenizer.from_pretrained(self.path)
        except Exception as e:  # a broken / foreign tokenizer: say which folder, not a traceback
            raise UserError(
                f"{self.path}: cannot load its tokenizer ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        tok.padding_side = "right"  # pooling reads valid tokens first; causal models need right padding
        if tok.pad_token_id is None:
            if tok.eos_token_id is not None:
                tok.pad_token = tok.eos_token
                self.log(
                    f"note: {self.path}: tokenizer has no pad token; padding with EOS {tok.eos_token!r} (padding is masked out, embeddings do not change)"
                )
            else:
                raise UserError(
                    f"{self.path}: tokenizer has neither a pad nor an EOS token; set one (tokenizer.pad_token = ...) and save it"
                )
        if self.pooling == "eos" and tok.eos_token_id is None:
            raise UserError(
                f"{self.path}: --pooling eos needs an EOS token and this tokenizer has none (use --pooling mean or last)"
            )
        return tok

    def _default_max_length(self, text_config) -> int:
        import json

        limits = []
        sbert = self.path / "sentence_bert_config.json"
        if sbert.is_file():
            limits.append(json.loads(sbert.read_text()).get("max_seq_length"))
        limits.append(getattr(self.tokenizer, "model_max_length", None))
        limits.append(getattr(text_config, "max_position_embeddings", None))
        limits = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < 1e8]
        return min(limits) if limits else 512

    def _load_model(self):
        from transformers import AutoModel

        try:
            model = AutoModel.from_pretrained(self.path, dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise UserError(
                f"{self.path}: cannot load the model ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        model.to(self.device).eval()
        # the hooks of layers 0..L need the list of blocks; -1 is read from the model's output
        self.blocks = layers_lib.transformer_blocks(model) if self.layer != -1 else None
        return model

    def _model_meta(self, name: str, revision: str | None):
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        n_params = sum(p.numel() for p in self.model.parameters())
        return ModelMeta.create_empty(
            overwrites=dict(
                name=name,
                revision=revision or "no_revision_available",
                # part of mteb's cache path: other pooling / layer / precision never reuse these scores
                experiment_kwargs={
                    "pooling": self.pooling,
                    "layer": self.layer,
                    "dtype": str(self.dtype).removeprefix("torch."),
                },
                similarity_fn_name=ScoringFunction.COSINE,
                embed_dim=self.hidden_size,
                n_parameters=n_params,
                max_tokens=self.max_length,
                framework=["PyTorch"],
                open_weights=True,
                reference=None,
            )
        )

    # --- encoding ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated to ``max_length``; never empty (see below).

        ``eos`` pooling appends EOS (kept within ``max_length``). A text that yields no token
        at all (an empty string with a tokenizer that adds no special tokens) becomes one BOS
        (else EOS) token, so it still gets a well-defined embedding.
        """
        tok = self.tokenizer
        room = self.max_length - (1 if self.pooling == "eos" else 0)
        ids = tok([str(t) for t in texts], add_special_tokens=True, truncation=True, max_length=room)[
            "input_ids"
        ]
        fallback = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        out = []
        for seq in ids:
            seq = list(seq)
            if self.pooling == "eos" and (not seq or seq[-1] != tok.eos_token_id):
                seq.append(tok.eos_token_id)
            if not seq:
                seq = [fallback if fallback is not None else tok.pad_token_id]
            out.append(seq)
        return out

    def encode_texts(
        self, texts: Sequence[str], *, batch_size: int | None = None, show_progress_bar: bool = False
    ):
        """Embed texts. Returns a float32 numpy array [len(texts), hidden_size], unit rows."""
        import numpy as np
        from tqdm.auto import tqdm

        texts = [str(t) for t in texts]
        unique = list(dict.fromkeys(texts))  # STS pairs repeat sentences: encode each once
        ids = self.tokenize(unique)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        bs = int(batch_size or self.batch_size)
        emb = np.zeros((len(unique), self.hidden_size), dtype=np.float32)
        starts = range(0, len(order), bs)
        for start in tqdm(
            starts, desc="Encoding", disable=not show_progress_bar or len(starts) < 2, leave=False
        ):
            rows = order[start : start + bs]
            emb[rows] = self._embed_batch([ids[i] for i in rows]).cpu().numpy()
        position = {t: i for i, t in enumerate(unique)}
        return emb[[position[t] for t in texts]]

    def _embed_batch(self, batch_ids: list[list[int]]):
        """One forward pass over right-padded ids; returns pooled, normalised [B, D] float32."""
        import torch

        width = max(len(s) for s in batch_ids)
        input_ids = torch.full((len(batch_ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for row, seq in enumerate(batch_ids):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            hidden = self.hidden_states(input_ids, mask)
        return pool_hidden_states(hidden, mask, self.pooling)

    def hidden_states(self, input_ids, attention_mask):
        """Hidden states [B, T, D] of ``self.layer`` (a hook reads block outputs; later blocks are skipped)."""
        if self.layer == -1:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        captured = {}

        def grab_input(module, args, kwargs):
            captured["h"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            raise _StopForward

        def grab_output(module, args, output):
            captured["h"] = output[0] if isinstance(output, tuple) else output
            raise _StopForward

        if self.blocks is None:
            self.blocks = layers_lib.transformer_blocks(self.model)
        if self.layer == 0:  # the embeddings = what block 1 receives
            handle = self.blocks[0].register_forward_pre_hook(grab_input, with_kwargs=True)
        else:
            handle = self.blocks[self.layer - 1].register_forward_hook(grab_output)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured["h"]

    # --- mteb's encoder protocol -------------------------------------------------------------
    def encode(
        self,
        inputs,
        *,
        task_metadata=None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type=None,
        **kwargs: Any,
    ):
        """mteb ``EncoderProtocol.encode``: a DataLoader of ``{"text": [...]}`` batches -> [N, D].

        Prompts / instructions are ignored on purpose: the paper scores frozen representations.
        """
        texts = [text for batch in inputs for text in batch["text"]]
        # a bar per encode call is noise in logs; mteb's own per-task bar stays
        show = kwargs.get("show_progress_bar", True) and sys.stderr.isatty()
        return self.encode_texts(texts, batch_size=kwargs.get("batch_size"), show_progress_bar=show)

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


def check_layer(layer: int, num_layers: int, where: Any = "model") -> int:
    """-1 or 0..num_layers (``nitp.layers.check_layer``), else ``UserError`` naming ``--layer``."""
    return layers_lib.check_layer(layer, num_layers, name="--layer")


def check_tokenizer_files(path: Path) -> None:
    """A local model folder must carry its tokenizer (``UserError`` naming the folder, else)."""
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(
            f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}); save the tokenizer into the model folder (tokenizer.save_pretrained)"
        )


def preflight(model_path: str | Path, pooling: str, layer: int) -> None:
    """Cheap checks before any model is loaded: pooling, layer range, tokenizer files present."""
    check_pooling(pooling)
    path = Path(model_path)
    check_tokenizer_files(path)
    check_layer(layer, int(_text_config(path).num_hidden_layers), path)


def _text_config(path: Path):
    """The model's (text) config; ``UserError`` naming the folder when it cannot be read."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path}: cannot read config.json ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    return config.get_text_config() if hasattr(config, "get_text_config") else config


# ----------------------------------------------------------------------------- results
def summarise(tasks: Iterable[Any], task_results: Iterable[Any]) -> dict:
    """mteb TaskResults -> the record's ``scores`` (fractions 0..1).

    ``tasks[name] = {main_score, metric, type, group}`` where ``main_score`` is the mean of
    mteb's main score over the task's evaluated splits and subsets (the paper's scope), rounded
    to 6 decimals like mteb's cache;
    ``groups`` are macro averages over the tasks present; ``overall`` the mean over all tasks
    (the paper's "Overall (25)").
    """
    by_name = {r.task_name: r for r in task_results}
    scores: dict[str, dict] = {}
    for task in tasks:
        meta = task.metadata
        result = by_name.get(meta.name)
        if result is None:
            continue
        values = [
            entry["main_score"]
            for split in task.eval_splits
            for entry in result.scores.get(split, [])
            if entry.get("hf_subset", "default") in (task.hf_subsets or ["default"])
        ]
        if not values:
            continue
        # 6 decimals, as mteb's cache stores them: a fresh and a cached run give the same record
        scores[meta.name] = {
            "main_score": round(float(sum(values) / len(values)), 6),
            "metric": meta.main_score,
            "type": meta.type,
            "group": group_of(meta.name, meta.type),
        }
    return {"tasks": scores, **aggregate(scores)}


def aggregate(task_scores: dict[str, dict]) -> dict:
    """Group macro averages and the overall mean over tasks."""
    groups: dict[str, list[float]] = {}
    for s in task_scores.values():
        groups.setdefault(s["group"], []).append(s["main_score"])
    ordered = sorted(
        groups, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER), g)
    )
    all_scores = [s["main_score"] for s in task_scores.values()]
    return {
        "groups": {g: sum(groups[g]) / len(groups[g]) for g in ordered},
        "overall": sum(all_scores) / len(all_scores) if all_scores else None,
    }


def record_tag(suite: str | None, task_names: Sequence[str], pooling: str, layer: int) -> str:
    """File-name tag of a record: suite (or a hash of the task list), pooling, layer."""
    which = suite if suite else "tasks-" + hashlib.sha1(",".join(sorted(task_names)).encode()).hexdigest()[:8]
    return f"{which}-{pooling}-{'last' if layer == -1 else f'layer{layer}'}"


def is_recorded(path: Path, info: dict, settings: dict) -> bool:
    """A record at ``path`` already holds every task of these settings for these weights."""
    if not path.is_file():
        return False
    try:
        rec = read_record(path)
    except UserError:
        return False
    s = rec.get("settings", {})
    return (
        rec.get("kind") == "mteb"
        and rec.get("model", {}).get("hash") == info["hash"]
        and s.get("pooling") == settings["pooling"]
        and s.get("layer") == settings["layer"]
        and set(s.get("tasks", [])) == set(settings["tasks"])
        and set(settings["tasks"]) <= set(rec.get("scores", {}).get("tasks", {}))
    )


def missing_tasks(record: dict) -> list[str]:
    """Tasks asked for in a record's settings that it has no score for."""
    return [t for t in record["settings"]["tasks"] if t not in record["scores"]["tasks"]]


def mteb_model_name(info: dict) -> str:
    step = f"-step{info['step']}" if info.get("step") is not None else ""
    return f"nitp-local/{info['name']}{step}"


def _record_path(info: dict, out: str | Path | None, several: bool, tag: str) -> Path:
    if out is None:
        return default_record_path(info, "mteb", tag)
    out = Path(out)
    if out.suffix == ".json":
        if several:
            raise UserError(f"--out {out}: one file for several checkpoints; give a directory instead")
        return out
    return out / f"{info['name']}-{info['hash'][:8]}-{tag}.json"


# ----------------------------------------------------------------------------- the entry point
def run_mteb(
    checkpoints,
    *,
    suite: str | None = None,
    tasks: Sequence[str] | None = None,
    pooling: str = "mean",
    layer: int = -1,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    redo: bool = False,
    device: str | None = None,
    batch_size: int = 32,
    log: Callable[[str], None] = _stderr,
) -> list[dict]:
    """Score checkpoints' frozen embeddings on MTEB tasks; one ``mteb`` record per checkpoint.

    Parameters
    ----------
    checkpoints : checkpoint folders, run directories (their latest checkpoint) or Hugging Face
        model folders; one path or a list
    suite : "paper" (the 25 tasks) | "offline" (shipped data; the default when ``tasks`` is None)
    tasks : mteb task names (instead of a suite)
    pooling, layer : see the module docstring
    out : record file (``.json``, one checkpoint) or directory; default ``RUN/results/mteb/...``
    data_dir : local mirror of the tasks' dataset repositories (``embed_data``); implies
        HF_HUB_OFFLINE. Tasks without a folder there are reported at once and skipped.
    redo : recompute even what the record and mteb's cache already hold
    device, batch_size : where and how many texts per forward pass

    Returns
    -------
    list of records (dicts, docs/contracts.md ``mteb``), in the order of ``checkpoints``.
    A record's ``settings["tasks"]`` lists the tasks asked for; tasks that could not run (no
    data) are absent from ``scores["tasks"]`` (see ``missing_tasks``) and are retried on rerun.

    mteb caches per-task results under ``$MTEB_CACHE`` (default ``~/.cache/mteb``) keyed by
    model name, revision = the checkpoint's weights hash, and pooling / layer / dtype.
    """
    check_pooling(pooling)
    if suite is not None and suite not in SUITES:
        raise UserError(f"unknown suite {suite!r} (choose one of: {', '.join(SUITES)})")
    if suite is None and not tasks:
        suite = "offline"
    if tasks:
        suite = None
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths:
        raise UserError("no checkpoint given")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise UserError(
            f"--data-dir {data_dir}: no such directory (write one with `nitp-eval mirror export --tasks ... --out {data_dir}`)"
        )
    infos = [checkpoint_info(p) for p in paths]  # bad paths fail before any work
    for info in infos:
        preflight(info["path"], pooling, int(layer))
    task_names = [t.metadata.name for t in resolve_tasks(suite, tasks)]  # unknown names fail here
    if data_dir is not None:
        use_offline_hub()

    records = []
    for info in infos:
        settings = {
            "suite": suite,
            "tasks": task_names,
            "pooling": pooling,
            "layer": int(layer),
            "batch_size": int(batch_size),
        }
        path = _record_path(info, out, len(infos) > 1, record_tag(suite, task_names, pooling, int(layer)))
        if not redo and is_recorded(path, info, settings):
            log(f"{info['path']}: already recorded in {path} (--redo recomputes)")
            records.append(read_record(path))
            continue
        record = _score_checkpoint(info, settings, data_dir=data_dir, redo=redo, device=device, log=log)
        if record["scores"]["tasks"]:
            write_record(path, record)
            log(f"record: {path}")
        records.append(record)
    return records


def _score_checkpoint(info: dict, settings: dict, *, data_dir, redo: bool, device: str | None, log) -> dict:
    import mteb

    task_objs = resolve_tasks(settings["suite"], None if settings["suite"] else settings["tasks"])
    if data_dir is not None:
        task_objs, problems = apply_data_dir(task_objs, data_dir)
        for line in problems:
            log(f"error: {line}")
        if not task_objs:
            names = ",".join(settings["tasks"])
            raise UserError(
                f"--data-dir {data_dir}: none of the {len(settings['tasks'])} tasks has data there; export them with `nitp-eval mirror export --tasks {names} --out {data_dir}`"
            )
    encoder = HiddenStateEncoder(
        info["path"],
        pooling=settings["pooling"],
        layer=settings["layer"],
        device=device,
        batch_size=settings["batch_size"],
        name=mteb_model_name(info),
        revision=info["hash"],
        log=log,
    )
    try:
        with _quiet_mteb():
            result = mteb.evaluate(
                encoder,
                task_objs,
                encode_kwargs={"batch_size": settings["batch_size"]},
                cache=mteb.ResultCache(),
                overwrite_strategy="always" if redo else "only-missing",
                raise_error=False,
            )
    finally:
        del encoder
        _free_memory()
    for failure in result.exceptions:
        first = (
            str(failure.exception).strip().splitlines()[0][:300]
            if str(failure.exception).strip()
            else "no message"
        )
        hint = (
            ""
            if data_dir is not None
            else f"; without hub access, {export_hint(failure.task_name)} and pass --data-dir DIR"
        )
        log(f"error: {failure.task_name}: could not run ({first}){hint}")
    scores = summarise(task_objs, result.task_results)
    versions = library_versions("mteb", "sentence-transformers", "datasets")
    return make_record("mteb", info, settings, scores, versions=versions)


@contextlib.contextmanager
def _quiet_mteb():
    """Keep the log readable: mteb's per-task bar stays; these go.

    The paper's task versions are superseded in mteb on purpose (skip that warning), and
    ``datasets`` draws a bar for every few-row split it generates (restored afterwards).
    """
    import datasets

    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is superseded by.*")
            warnings.filterwarnings("ignore", message=r".*No prompt found.*")
            yield
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _free_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the table
def model_labels(records: Sequence[dict]) -> list[str]:
    """Short column labels: run/model name (+ step), with the hash when names collide."""
    labels = []
    for r in records:
        m = r["model"]
        labels.append(m["name"] + (f"@{m['step']}" if m.get("step") is not None else ""))
    if len(set(labels)) < len(labels):
        labels = [f"{lab}#{r['model']['hash'][:8]}" for lab, r in zip(labels, records)]
    return labels


def format_table(records: Sequence[dict]) -> str:
    """A plain-text table of main scores in percent, grouped like the paper.

    One column per record; with two or more, a delta column (last minus first) per task and
    group, and "wins k of n" (tasks where the last model beats the first).
    """
    if not records:
        return "(no results)"
    labels = model_labels(records)
    names: list[str] = []
    info: dict[str, dict] = {}
    for r in records:
        for name, s in r["scores"]["tasks"].items():
            if name not in info:
                names.append(name)
                info[name] = s
    compare = len(records) > 1
    width = max([len(n) for n in names] + [len("Overall (00)"), 14])
    cols = [max(len(lab), 7) for lab in labels]
    header = (
        f"{'task':<{width}}  "
        + "  ".join(f"{lab:>{c}}" for lab, c in zip(labels, cols))
        + ("    delta" if compare else "")
    )
    lines = [header, "-" * len(header)]

    def row(label: str, values: list) -> str:
        cells = "  ".join(
            f"{(v * 100):>{c}.2f}" if v is not None else f"{'-':>{c}}" for v, c in zip(values, cols)
        )
        delta = ""
        if compare:
            a, b = values[0], values[-1]
            delta = f"  {((b - a) * 100):>+7.2f}" if a is not None and b is not None else f"  {'-':>7}"
        return f"{label:<{width}}  {cells}{delta}"

    groups = sorted(
        {info[n]["group"] for n in names}, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g)
    )
    for g in groups:
        members = [n for n in names if info[n]["group"] == g]
        for n in members:
            lines.append(row(n, [r["scores"]["tasks"].get(n, {}).get("main_score") for r in records]))
        lines.append(row(f"[{g} ({len(members)})]", [r["scores"]["groups"].get(g) for r in records]))
        lines.append("")
    lines.append(row(f"Overall ({len(names)})", [r["scores"].get("overall") for r in records]))
    if compare:
        both = [
            n for n in names if n in records[0]["scores"]["tasks"] and n in records[-1]["scores"]["tasks"]
        ]
        wins = sum(
            records[-1]["scores"]["tasks"][n]["main_score"] > records[0]["scores"]["tasks"][n]["main_score"]
            for n in both
        )
        lines.append(f"{labels[-1]} wins {wins} of {len(both)} tasks against {labels[0]}")
    return "\n".join(lines)
