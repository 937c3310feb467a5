"""Xiezhi (Gu et al. 2023): multiple-choice domain-knowledge questions, Chinese and English.

Xiezhi is published in the GitHub repository MikeGu721/XiezhiBenchmark, not on the Hugging Face
hub. Its files are JSON lines, one question per line::

    {"question": str, "labels": [discipline, ...], "answer": str, "options": "opt1\\nopt2\\nopt3\\nopt4"}

``answer`` is the text of the correct option. As in OpenCompass's Xiezhi loader, questions
whose ``options`` do not split into exactly four lines are dropped and the options are lettered
A-D. ``load_xiezhi`` reads the repository's files from GitHub (the online path); with
``nitp-eval bench --data-dir`` the same files are read from a local mirror instead.
"""

RAW = "https://raw.githubusercontent.com/MikeGu721/XiezhiBenchmark/main/"
# config -> split -> path inside the repository
FILES = {
    f"xiezhi_{kind}_{lang}": {
        "test": f"Tasks/Knowledge/Benchmarks/test/xiezhi_{kind}_{lang}/xiezhi.v1.1.json",
        "train": f"Tasks/Knowledge/Benchmarks/train/xiezhi_train_{lang}/xiezhi.v1.1.json",
    }
    for kind in ("spec", "inter")
    for lang in ("chn", "eng")
}


def load_xiezhi(source_config: str, **_):
    """DatasetDict {"test", "train"} of one Xiezhi config, read from the GitHub repository."""
    import datasets

    files = {split: RAW + path for split, path in FILES[source_config].items()}
    return datasets.load_dataset("json", data_files=files)


def to_four_choices(dataset):
    """``{"question", "choices": [4 options], "label": index of the answer}``; other rows dropped."""

    def parse(doc):
        options = doc["options"]
        if options.endswith('"\n'):
            options = options[:-2]
        choices = options.split("\n")
        ok = len(choices) == 4 and doc["answer"] in choices
        return {
            "question": doc["question"],
            "choices": choices if ok else ["", "", "", ""],
            "label": choices.index(doc["answer"]) if ok else -1,
        }

    parsed = dataset.map(parse, remove_columns=dataset.column_names)
    return parsed.filter(lambda doc: doc["label"] >= 0)
