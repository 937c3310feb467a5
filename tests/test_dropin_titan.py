"""torchtitan's own loss classes with NITP: ``NITPLoss(BaseLoss)`` built on torchtitan 0.3.0.

torchtitan pins ``datasets<4.8`` (this project uses 5.x), so it cannot share the environment: the
fixture installs torchtitan and the three small packages its loss module imports into a cache
folder with ``pip install --no-deps --target`` (once) and puts that folder on ``sys.path`` for this
module only. Skips where the package index cannot be reached.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from tests.test_dropin import padded_batch, tiny_llama

PACKAGES = ["torchtitan==0.3.0", "spmd_types==0.2.3", "tyro==1.0.17", "docstring_parser==0.18.0"]


@pytest.fixture(scope="module")
def torchtitan_loss():
    from nitp.records import cache_dir

    target = cache_dir() / "test-packages" / "torchtitan-0.3.0"
    if not (target / "torchtitan").is_dir():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *PACKAGES],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"torchtitan not installable here: {done.stderr.strip().splitlines()[-1:]}")
    sys.path.insert(0, str(target))
    try:
        import torchtitan.components.loss as loss

        yield loss
    finally:
        sys.path.remove(str(target))


@pytest.mark.slow
def test_nitp_loss_is_torchtitans_ce_plus_weighted_nitp_and_equals_the_wrapper(torchtitan_loss):
    from nitp_train.dropin import wrap_model
    from nitp_train.dropin.titan import NITPTerm, drop_nitp_head, nitp_loss_class

    NITPLoss = nitp_loss_class()
    assert issubclass(NITPLoss, torchtitan_loss.BaseLoss)
    ids, mask, labels = padded_batch()
    wrapped = wrap_model(tiny_llama(), target_layer=2, weight=0.7)
    model = copy.deepcopy(wrapped.model)
    term = NITPTerm(32)
    term.attach(model, 2)
    term.head.load_state_dict(wrapped.head.state_dict())
    loss_fn = NITPLoss(NITPLoss.Config(weight=0.7), term=term)

    n_items = (labels[:, 1:] != -100).sum()
    want = wrapped(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=n_items)
    logits = model(input_ids=ids, attention_mask=mask).logits
    shifted = torch.cat([labels[:, 1:], torch.full((labels.shape[0], 1), -100)], 1)  # torchtitan's layout
    total, metrics = loss_fn(logits, shifted, global_valid_tokens=n_items)
    ce, _ = torchtitan_loss.CrossEntropyLoss(torchtitan_loss.CrossEntropyLoss.Config())(
        logits, shifted, n_items
    )
    torch.testing.assert_close(ce, want.loss_ntp, rtol=1e-5, atol=1e-6)  # torchtitan's CE = the LM's
    torch.testing.assert_close(total, want.loss, rtol=1e-5, atol=1e-6)  # CE + 0.7 * NITP, same weights
    assert {"loss_ntp", "loss_nitp"} <= set(metrics)
    total.backward()
    assert term.head.down.weight.grad is not None and term.head.down.weight.grad.abs().sum() > 0
    assert set(drop_nitp_head(model.state_dict())) == set(wrapped.model.state_dict())


class _TitanLayout(torch.nn.Module):
    """torchtitan's ``Transformer`` layout: ``model_args.n_layers``, blocks in a ModuleDict, ``norm``."""

    def __init__(self, dim=16, n_layers=3, vocab=50):
        super().__init__()
        from types import SimpleNamespace

        self.model_args = SimpleNamespace(n_layers=n_layers, dim=dim)
        self.tok_embeddings = torch.nn.Embedding(vocab, dim)
        self.layers = torch.nn.ModuleDict({str(i): torch.nn.Linear(dim, dim) for i in range(n_layers)})
        self.norm = torch.nn.LayerNorm(dim)
        self.output = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens)
        for block in self.layers.values():
            h = torch.tanh(block(h))
        return self.output(self.norm(h))


def test_term_reads_torchtitans_layout_through_nitp_layers():
    """Blocks in a ModuleDict and no HF config: z is block k's output, h the final norm's."""
    from nitp_train.dropin.titan import NITPTerm

    torch.manual_seed(0)
    model = _TitanLayout()
    term = NITPTerm(16)
    term.attach(model, 2)
    tokens = torch.randint(0, 50, (2, 7))
    seen = {}
    model.layers["1"].register_forward_hook(lambda _m, _a, out: seen.setdefault("block2", out))
    model(tokens)
    torch.testing.assert_close(term.captured["target"], seen["block2"])
    assert term.captured["last"].shape == (2, 7, 16)
    labels = torch.cat([tokens[:, 1:], torch.full((2, 1), -100)], 1)  # torchtitan's shifted labels
    total, pairs = term(labels)
    assert int(pairs) == 2 * 6 and total.requires_grad  # t = 0..5 of 7 tokens: each has a next token
