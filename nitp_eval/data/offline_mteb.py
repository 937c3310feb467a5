"""The offline MTEB suite: mteb tasks over real, human-labelled data that installed packages ship.

Every task is a subclass of one of mteb's own abstract tasks (``AbsTaskSTS``,
``AbsTaskClassification``), so scoring is mteb's: Spearman correlation of cosine similarities
with the human scores for STS, logistic regression on frozen embeddings (mteb's few-shot
protocol: ``samples_per_label`` training examples per label, ``n_experiments`` draws) for
classification. Only the data loading is ours; it reads files from the ``gensim`` wheel
(``gensim/test/test_data``) without importing gensim.

STS: WordSim353 (353 word pairs), SimLex999 (999 word pairs), LeeDocumentSimilarity (1,225 pairs
of 50 news documents); classification: PangLeePolarity (200 movie-review sentences),
MiniNewsgroups (200 Usenet posts, headers removed), each split 100 / 100 into train / test by
alternating within each label. Nothing is downloaded; the suite runs on an air-gapped laptop.

Example
-------
>>> task = OFFLINE_TASKS["WordSim353"]()                      # doctest: +SKIP
>>> task.load_data(); task.dataset["test"][0]                 # doctest: +SKIP
{'sentence1': 'love', 'sentence2': 'sex', 'score': 6.77}
"""

from __future__ import annotations

import copyreg
import io
import pickle
import zlib
from importlib import metadata as _metadata
from typing import Any

from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from nitp.errors import UserError

from .offline_bench import gensim_test_data, read_pang_lee


# ----------------------------------------------------------------------------- the shipped files
def _data_revision() -> str:
    return f"gensim-{_metadata.version('gensim')}"


def read_word_pairs(name: str) -> list[tuple[str, str, float]]:
    """``word1 <tab> word2 <tab> mean human score`` lines (``#`` lines are comments)."""
    lines = (gensim_test_data() / name).read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t")[:3] for line in lines if line.strip() and not line.startswith("#")]
    return [(w1, w2, float(score)) for w1, w2, score in rows]


def read_lee_pairs() -> list[tuple[str, str, float]]:
    """All pairs (i < j) of the 50 Lee documents with their mean human similarity (0..1).

    ``similarities0-1.txt`` is the upper triangle of the 50 x 50 matrix (row i, column j > i).
    """
    folder = gensim_test_data()
    docs = (folder / "lee.cor").read_text(encoding="cp1252").splitlines()
    matrix = [
        [float(v) for v in line.split()]
        for line in (folder / "similarities0-1.txt").read_text().splitlines()
        if line.strip()
    ]
    n = len(docs)
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise UserError(f"{folder}: lee.cor has {n} documents but similarities0-1.txt is not {n} x {n}")
    return [(docs[i], docs[j], matrix[i][j]) for i in range(n) for j in range(i + 1, n)]


def read_mini_newsgroups() -> tuple[list[tuple[str, int]], list[str]]:
    """gensim's 20-Newsgroups subset (a zlib-compressed pickle of an sklearn ``Bunch``).

    Unpickled with an allow-list (dict, numpy arrays) so the file can run no code. The header
    block (``From:``, ``Newsgroups:`` ... up to the first blank line) names the label, so it is
    removed, as sklearn's ``fetch_20newsgroups(remove=("headers",))`` does.
    """
    raw = zlib.decompress((gensim_test_data() / "mini_newsgroup").read_bytes())
    bunch = _AllowListUnpickler(io.BytesIO(raw), encoding="latin-1").load()
    rows = [
        (text.partition("\n\n")[2].strip(), int(label)) for text, label in zip(bunch["data"], bunch["target"])
    ]
    return rows, list(bunch["target_names"])


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import numpy as np

        allowed = {
            ("copy_reg", "_reconstructor"): copyreg._reconstructor,
            ("sklearn.datasets.base", "Bunch"): dict,
            ("__builtin__", "dict"): dict,
            ("__builtin__", "object"): object,
            ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"mini_newsgroup: refusing to unpickle {module}.{name}")
        return allowed[(module, name)]


def alternate_split(rows: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Deterministic balanced train/test split: within each label, items alternate train, test."""
    seen: dict[int, int] = {}
    train, test = [], []
    for text, label in rows:
        (train if seen.get(label, 0) % 2 == 0 else test).append((text, label))
        seen[label] = seen.get(label, 0) + 1
    return train, test


# ----------------------------------------------------------------------------- task classes
_MAIN_SCORES = {"STS": "cosine_spearman", "Classification": "accuracy"}  # mteb's own for each type


class _LocalTask:
    """An mteb task whose data come from a local reader (``read``) instead of the hub; a subclass
    gives its gensim test file and the ``TaskMetadata`` fields that differ per task as class
    keywords (the rest follows from the task type or is the same for every task)."""

    task_type: str  # mteb's task type, of the abstract task mixed in

    def __init_subclass__(cls, file: str | None = None, **described: Any) -> None:
        super().__init_subclass__()
        if file is not None:
            cls.metadata = _metadata_for(file, cls.task_type, **described)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        from datasets import Dataset, DatasetDict

        if not self.data_loaded:
            splits = self.splits(self.read())
            self.dataset = DatasetDict({name: Dataset.from_dict(columns) for name, columns in splits.items()})
            self.data_loaded = True


def _metadata_for(file: str, type: str, **described: Any) -> TaskMetadata:
    described.setdefault("task_subtypes", [])
    return TaskMetadata(
        dataset={"path": f"gensim/test/test_data/{file}", "revision": _data_revision()},
        type=type,
        category="t2c" if type == "Classification" else "t2t",
        main_score=_MAIN_SCORES[type],
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        license="not specified",
        annotations_creators="human-annotated",
        dialect=[],
        sample_creation="found",
        **described,
    )


class _LocalSTS(_LocalTask, AbsTaskSTS):
    """An STS task: ``read()`` gives (sentence1, sentence2, score) pairs, all of them the test split."""

    task_type = "STS"

    @staticmethod
    def splits(pairs: list[tuple[str, str, float]]) -> dict:
        s1, s2, score = zip(*pairs)
        return {"test": {"sentence1": list(s1), "sentence2": list(s2), "score": list(score)}}


class _LocalClassification(_LocalTask, AbsTaskClassification):
    """A classification task: ``read()`` gives (text, label) rows, split by :func:`alternate_split`."""

    task_type = "Classification"
    samples_per_label = 32  # 50 training items per label: use most of them, like mteb's AmazonCounterfactual
    n_experiments = 10

    @staticmethod
    def splits(rows: list[tuple[str, int]]) -> dict:
        parts = dict(zip(("train", "test"), alternate_split(rows)))
        return {k: {"text": [t for t, _ in p], "label": [y for _, y in p]} for k, p in parts.items()}


class WordSim353(
    _LocalSTS,
    name="WordSim353",
    description="WordSimilarity-353: 353 English word pairs with the mean relatedness judgement of 13-16 people (0-10).",
    reference="http://www.cs.technion.ac.il/~gabr/resources/data/wordsim353/",
    file="wordsim353.tsv",
    domains=["Written"],
    date=("2001-01-01", "2002-12-31"),
    bibtex_citation="@article{finkelstein2002placing, title={Placing search in context: the concept revisited}, author={Finkelstein, Lev and Gabrilovich, Evgeniy and Matias, Yossi and Rivlin, Ehud and Solan, Zach and Wolfman, Gadi and Ruppin, Eytan}, journal={ACM Transactions on Information Systems}, volume={20}, number={1}, pages={116--131}, year={2002}}",
):
    min_score, max_score = 0, 10
    read = staticmethod(lambda: read_word_pairs("wordsim353.tsv"))


class SimLex999(
    _LocalSTS,
    name="SimLex999",
    description="SimLex-999: 999 English word pairs rated for similarity (not relatedness) by ~50 people each (0-10).",
    reference="https://fh295.github.io/simlex.html",
    file="simlex999.txt",
    domains=["Written"],
    date=("2014-01-01", "2015-12-31"),
    bibtex_citation="@article{hill2015simlex, title={SimLex-999: Evaluating Semantic Models With (Genuine) Similarity Estimation}, author={Hill, Felix and Reichart, Roi and Korhonen, Anna}, journal={Computational Linguistics}, volume={41}, number={4}, pages={665--695}, year={2015}}",
):
    min_score, max_score = 0, 10
    read = staticmethod(lambda: read_word_pairs("simlex999.txt"))


class LeeDocumentSimilarity(
    _LocalSTS,
    name="LeeDocumentSimilarity",
    description="Lee et al. (2005): 50 Australian news documents, all 1,225 pairs, mean similarity rating of ~10 people per pair, scaled to 0-1.",
    reference="https://escholarship.org/uc/item/48g155nq",
    file="lee.cor",
    domains=["News", "Written"],
    date=("2005-01-01", "2005-12-31"),
    bibtex_citation="@inproceedings{lee2005empirical, title={An empirical evaluation of models of text document similarity}, author={Lee, Michael D. and Pincombe, Brandon and Welsh, Matthew}, booktitle={Proceedings of the Annual Meeting of the Cognitive Science Society}, volume={27}, year={2005}}",
):
    min_score, max_score = 0, 1
    read = staticmethod(read_lee_pairs)


class PangLeePolarity(
    _LocalClassification,
    name="PangLeePolarity",
    description="Pang & Lee (2005) movie-review sentence polarity, 100 positive + 100 negative sentences; train/test alternate within each label.",
    reference="https://www.cs.cornell.edu/people/pabo/movie-review-data/",
    file="pang_lee_polarity.cor",
    domains=["Reviews", "Written"],
    task_subtypes=["Sentiment/Hate speech"],
    date=("2005-01-01", "2005-12-31"),
    bibtex_citation="@inproceedings{pang2005seeing, title={Seeing stars: Exploiting class relationships for sentiment categorization with respect to rating scales}, author={Pang, Bo and Lee, Lillian}, booktitle={Proceedings of ACL}, pages={115--124}, year={2005}}",
):
    read = staticmethod(read_pang_lee)


class MiniNewsgroups(
    _LocalClassification,
    name="MiniNewsgroups",
    description="200 Usenet posts of 20 Newsgroups (alt.atheism, sci.space; 100 each), headers removed; train/test alternate within each label.",
    reference="http://qwone.com/~jason/20Newsgroups/",
    file="mini_newsgroup",
    domains=["Social", "Written"],
    task_subtypes=["Topic classification"],
    date=("1993-01-01", "1993-12-31"),
    bibtex_citation="@inproceedings{lang1995newsweeder, title={NewsWeeder: Learning to filter netnews}, author={Lang, Ken}, booktitle={Proceedings of ICML}, pages={331--339}, year={1995}}",
):
    read = staticmethod(lambda: read_mini_newsgroups()[0])


OFFLINE_TASKS: dict[str, type] = {
    cls.metadata.name: cls
    for cls in (WordSim353, SimLex999, LeeDocumentSimilarity, PangLeePolarity, MiniNewsgroups)
}
