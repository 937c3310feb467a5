"""PIQA acc_norm computed directly with transformers, to compare with `nitp-eval bench --tasks lt_piqa`.

The check behind docs/real-models.md ("Scores beside the model cards"): the same prompt as
lm-eval's ``piqa`` task ("Question: {goal}\\nAnswer:", each solution scored as the continuation
" {sol}"), log-likelihood divided by the continuation's length in bytes (lm-eval's acc_norm),
without lm-eval. If this equals the bench score on the same rows, the wrapper adds nothing
to a gap with a model card.

    python docs/checks/piqa_direct.py MODEL_FOLDER MIRROR [--rows N]
"""

import argparse
import glob

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("mirror")
    ap.add_argument("--rows", type=int, default=None)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    rows = pq.read_table(glob.glob(f"{args.mirror}/baber/piqa/*/validation*.parquet")[0]).to_pylist()
    rows = rows[: args.rows]

    def loglik(context: str, continuation: str) -> float:
        a = tok(context, add_special_tokens=False)["input_ids"]
        b = tok(context + continuation, add_special_tokens=False)["input_ids"][len(a) :]
        logp = model(torch.tensor([a + b])).logits.log_softmax(-1)[0, len(a) - 1 : -1]
        return logp.gather(1, torch.tensor(b)[:, None]).sum().item()

    acc = acc_norm = 0
    with torch.no_grad():
        for r in rows:
            context = f"Question: {r['goal']}\nAnswer:"
            conts = [" " + r["sol1"], " " + r["sol2"]]
            ll = [loglik(context, c) for c in conts]
            norm = [x / len(c.encode("utf-8")) for x, c in zip(ll, conts)]
            acc += max(range(2), key=ll.__getitem__) == r["label"]
            acc_norm += max(range(2), key=norm.__getitem__) == r["label"]
    print(f"rows {len(rows)}: acc {100 * acc / len(rows):.2f}, acc_norm {100 * acc_norm / len(rows):.2f}")


if __name__ == "__main__":
    main()
