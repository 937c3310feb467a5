"""``nitp-geom diff-erank``: Diff-eRank (Wei et al. 2024) of a trained model against a random copy.

For each sequence s of a fixed corpus sample and each requested layer, the token states are
centred and each row scaled to unit norm; ``H_s`` is the von Neumann entropy (nats) of their
trace-1 covariance (``nitp.geometry.normalized_covariance_entropy``). A model's eRank on the data
is ``exp(mean_s H_s)`` (``dataset_erank``), and

    diff_erank = eRank(randomly initialised copy) - eRank(trained model)

with the copy built from the same config by transformers' ``AutoModel.from_config`` under
``torch.manual_seed(init_seed)``. Positive = training reduced the rank ("removed noise": the
paper reads larger as better). **This rewards the opposite direction from the NITP paper's
"higher rank is better"**: it is reported under its own name, never as a rank. The paper uses
the last layer (-1 here); other layers are measured with ``--layers``. Cost: two forward passes
and one ``min(T, d)``-sized eigendecomposition per sequence and layer.

Example
-------
>>> from analysis.diffrank import diff_erank_record
>>> from analysis.settings import DiffErankSettings
>>> rec = diff_erank_record("runs/smol-nitp", DiffErankSettings(n_tokens=4096))  # doctest: +SKIP
>>> rec["scores"]["diff_erank"]["layers"][-1]["diff_erank"]                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

from nitp.runs import resolve_checkpoint

from .measure import _progress, cached_record, checked_settings, geom_cache_key, record_tag, sample_settings
from .settings import DiffErankSettings

LABEL = (
    "Diff-eRank = eRank(random init) - eRank(trained), Wei et al. 2024: POSITIVE when training "
    "lowered the rank; it rewards the opposite direction from 'higher rank is better'"
)


def random_copy(loaded, init_seed: int = 0):
    """A ``LoadedModel`` of the same config with seeded random weights (``AutoModel.from_config``)."""
    import torch
    from transformers import AutoModel

    from nitp.loading import load_config, model_folder

    config = load_config(model_folder(loaded.path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = AutoModel.from_config(config)
    model = model.to(device=loaded.device, dtype=getattr(torch, loaded.dtype)).eval()
    return dataclasses.replace(loaded, model=model, lm_head=None)


def diff_erank(
    checkpoint, settings: DiffErankSettings = DiffErankSettings(), *, progress: bool = True
) -> tuple[dict, dict]:
    """Per layer: eRank of the trained model and of its random copy, and their difference.

    ``settings``: the sample, layers and ``init_seed`` (:class:`~analysis.settings.DiffErankSettings`).
    Returns ``(settings, scores)``; ``scores["diff_erank"]["layers"]`` holds one dict per layer
    with ``erank_trained``, ``erank_random``, ``diff_erank`` and ``n_sequences``.
    """
    from nitp.geometry import dataset_erank
    from nitp.geometry import diff_erank as difference

    from .hidden import corpus_sample, default_seq_len, load_model, resolve_layers

    s = settings
    trained = load_model(checkpoint, device=s.device, dtype=s.dtype)
    rand = random_copy(trained, s.init_seed)
    layer_list = resolve_layers(s.layers, trained.n_layers, where=str(trained.path))
    sample = corpus_sample(
        trained.tokenizer, s.corpus, s.n_tokens, default_seq_len(trained, s.seq_len), s.seed, 0.0
    )
    entropies = {name: {k: [] for k in layer_list} for name in ("trained", "random")}
    with _progress(progress, f"diff-erank {trained.path.name} (trained, random)", 2) as advance:
        copy = f"{trained.path} (its random copy, --init-seed {s.init_seed})"  # where a NaN/inf error points
        for name, model, where in (("trained", trained, str(trained.path)), ("random", rand, copy)):
            _sequence_entropies(model, sample, layer_list, s.batch_size, entropies[name], where)
            advance()
    rows = []
    for k in layer_list:
        erank = {name: dataset_erank(entropies[name][k]) for name in entropies}
        rows.append(
            {
                "layer": k,
                "name": trained.layer_name(k),
                "erank_trained": erank["trained"],
                "erank_random": erank["random"],
                "diff_erank": difference(erank["random"], erank["trained"]),
                "n_sequences": len(entropies["trained"][k]),
            }
        )
    scores = {"diff_erank": {"label": LABEL, "layers": rows}}
    recorded = sample_settings(s, trained, sample, layer_list, init_seed=s.init_seed)
    return recorded, scores


def _sequence_entropies(model, sample, layers: list[int], batch_size: int, out: dict, where: str) -> None:
    """Append each sequence's normalised covariance entropy, per layer, to ``out[k]``; NaN/inf
    states are one ``UserError`` naming ``where`` (the model) and the layer."""
    from nitp.geometry import normalized_covariance_entropy

    from .hidden import check_finite, iter_hidden_states

    for batch, _ in iter_hidden_states(model, sample, layers, batch_size):
        lengths = batch.mask.sum(1).tolist()
        for k in layers:
            check_finite(batch.states[k][batch.mask], where, k)
            for b, n in enumerate(lengths):
                if n >= 2:
                    out[k].append(normalized_covariance_entropy(batch.states[k][b, :n]))


def diff_erank_record(
    checkpoint,
    settings: DiffErankSettings = DiffErankSettings(),
    *,
    out=None,
    redo: bool = False,
    progress: bool = True,
) -> dict:
    """``diff_erank`` as a cached ``kind: "geom"`` record with a ``diff_erank`` section;
    ``record["_path"]`` is where it was written."""
    settings = checked_settings(settings, (checkpoint,), out)
    ckpt = resolve_checkpoint(checkpoint)
    tag = f"diff-erank-init{settings.init_seed}-" + record_tag(settings)
    wanted = geom_cache_key(settings, checkpoint=ckpt)

    def compute() -> tuple[dict, dict]:
        return diff_erank(checkpoint, settings, progress=progress)

    return cached_record("diff-erank", ckpt, out, tag, wanted, compute, redo=redo)
