"""`nitp-eval mirror export`: download what the benchmarks (and MTEB tasks) need into a local mirror,
in the hub repository layout that ``nitp_eval.data.mirror`` reads (run on a machine with the hub)."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Iterable

from nitp.errors import UserError
from nitp.io import atomic_write_text

from .hub_card import write_card
from .mirror import (
    DataNeed,
    check,
    data_needs,
    missing_reason,
    pick_config,
    readme_configs,
    repo_dir,
    split_names,
    task_manager,
)


# ----------------------------------------------------------------------------- export
def export(
    names: Iterable[str],
    out: str | os.PathLike,
    *,
    token: str | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Download what ``names`` need into the mirror ``out``; returns ``check(out, names)``.

    Needs the Hugging Face hub (and, for Xiezhi and LCBench, their download sites). Reruns skip
    repositories already complete.
    """
    names = list(names)
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        raise UserError(
            "mirror export downloads from the Hugging Face hub, but HF_HUB_OFFLINE is set: "
            "run it as `HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 nitp-eval mirror export ...`"
        )
    bench, mteb = split_names(names)  # unknown names fail before anything is written
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if bench:
        needs = data_needs(task_manager(), [b.lm_eval_task for b in bench])
        by_repo: dict[str, list[DataNeed]] = {}
        for need in needs:
            by_repo.setdefault(need.repo, []).append(need)
        for repo, repo_needs in by_repo.items():
            if all(missing_reason(out, n) is None for n in repo_needs):
                log(f"{repo}: already complete")
                continue
            configs = {n.config for n in repo_needs}
            log(f"{repo}: downloading {len(configs)} config(s)")
            if repo in URL_SOURCES:
                URL_SOURCES[repo](out, configs)
            else:
                _export_hub_repo(repo, repo_needs[0].revision, configs, out, token)
    for entry in mteb:
        folder = repo_dir(out, entry["repo"])
        if folder.is_dir() and any(folder.iterdir()):
            log(f"{entry['repo']}: already present")
            continue
        log(f"{entry['repo']}: downloading (MTEB task {entry['task']})")
        from huggingface_hub import snapshot_download

        snapshot_download(
            entry["repo"], repo_type="dataset", revision=entry.get("revision"), local_dir=folder, token=token
        )
    return check(out, names)


def _export_hub_repo(repo: str, revision: str | None, configs: set, out: Path, token: str | None) -> None:
    """``snapshot_download`` of the card plus the files of the needed configs only.

    A repository that still ships a loading script (e.g. EleutherAI/lambada_openai) is read by
    datasets >= 4 from the hub's parquet conversion (``refs/convert/parquet``,
    ``<config>/<split>/NNNN.parquet``): that is what gets mirrored, with a card listing it.
    """
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    dest = repo_dir(out, repo)
    hf_hub_download(repo, "README.md", repo_type="dataset", revision=revision, local_dir=dest, token=token)
    listed = readme_configs(dest)
    if listed is not None:
        picked = [pick_config(listed, c) for c in configs]
        patterns = ["README.md", *(p for c in picked if c for ps in listed[c]["splits"].values() for p in ps)]
        snapshot_download(
            repo, repo_type="dataset", revision=revision, local_dir=dest, allow_patterns=patterns, token=token
        )
        return
    files = HfApi().list_repo_files(repo, repo_type="dataset", revision=revision, token=token)
    if not any(f.endswith(".py") for f in files):  # plain data files: datasets infers the splits
        snapshot_download(repo, repo_type="dataset", revision=revision, local_dir=dest, token=token)
        return
    names = [c or "default" for c in configs]
    snapshot_download(
        repo,
        repo_type="dataset",
        revision="refs/convert/parquet",
        local_dir=dest,
        allow_patterns=[f"{n}/*/*.parquet" for n in names],
        token=token,
    )
    card = {
        n: {s.name: f"{n}/{s.name}/*.parquet" for s in sorted((dest / n).iterdir()) if s.is_dir()}
        for n in names
    }
    write_card(dest, card, f"# {repo} (mirror of the hub's parquet conversion)")


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - fixed https/http sources
            shutil.copyfileobj(r, f)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_xiezhi(out: Path, configs: set) -> None:
    """Xiezhi's files from its GitHub repository, in the repository's own paths, plus a card."""
    from ..tasks.xiezhi import utils

    root = repo_dir(out, "MikeGu721/XiezhiBenchmark")
    for name in sorted(utils.FILES):
        for path in utils.FILES[name].values():
            if not (root / path).is_file():
                _download(utils.RAW + path, root / path)
    write_card(root, utils.FILES, "# Xiezhi (mirror of MikeGu721/XiezhiBenchmark, benchmark files only)")


def export_lcbench(out: Path, configs: set) -> None:
    """LCBench's two JSON-lines files from OpenCompass's archive, plus a card."""
    from ..tasks.lcbench import utils

    root = repo_dir(out, "opencompass/LCBench2023")
    root.mkdir(parents=True, exist_ok=True)
    archive = root / ".LCBench2023.zip"
    _download(utils.ZIP_URL, archive)
    with zipfile.ZipFile(archive) as z:
        for member in utils.FILES.values():
            atomic_write_text(root / Path(member).name, z.read(member).decode("utf-8"))
    archive.unlink()
    write_card(
        root,
        {c: {"test": Path(m).name} for c, m in utils.FILES.items()},
        "# LCBench2023 (mirror of OpenCompass's LCBench2023.zip)",
    )


# repositories that are not on the hub: repo -> exporter
URL_SOURCES: dict[str, Callable[[Path, set], None]] = {
    "MikeGu721/XiezhiBenchmark": export_xiezhi,
    "opencompass/LCBench2023": export_lcbench,
}
