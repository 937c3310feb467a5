"""C3 (Sun et al. 2020): free-form multiple-choice Chinese reading comprehension.

Hub dataset ``dataset-org/c3``, configs ``mixed`` and ``dialog``; each row is one document
with several questions::

    {"documents": [str, ...], "document_id": str,
     "questions": {"question": [str, ...], "answer": [str, ...], "choice": [[str, ...], ...]}}

``flatten_questions`` turns a row into one lm-eval doc per question.
"""


def flatten_questions(dataset):
    """One doc per question: ``{"passage", "question", "choices", "label"}``."""

    def explode(batch):
        out = {"passage": [], "question": [], "choices": [], "label": []}
        for documents, questions in zip(batch["documents"], batch["questions"]):
            passage = "\n".join(documents)
            for question, answer, choices in zip(
                questions["question"], questions["answer"], questions["choice"]
            ):
                out["passage"].append(passage)
                out["question"].append(question)
                out["choices"].append(list(choices))
                out["label"].append(list(choices).index(answer))
        return out

    return dataset.map(explode, batched=True, remove_columns=dataset.column_names)
