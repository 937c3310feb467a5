"""A ``torch.distributed.checkpoint`` storage layer that never unpickles: JSON metadata, safe loads.

Stock DCP pickles its ``Metadata`` into ``.metadata`` and reads it back with ``pickle.load``, and
its default load planner reads non-tensor items with ``torch.load(weights_only=False)``: a
crafted checkpoint would run code on resume. Here

- :class:`JsonMetadataWriter` writes the same ``.metadata`` as JSON (``FORMAT``), never a pickle;
- :class:`JsonMetadataReader` parses that JSON back into DCP's dataclasses; anything else
  (a pickle, truncated text) is a one-line ``UserError``, not executed;
- :class:`SafeLoadPlanner` reads the non-tensor items (optimizer hyper-parameters, group names)
  with ``torch.load(weights_only=True)``, torch's restricted loader, as DCP's file reader already
  does for tensors.

The ``.distcp`` data files are DCP's own (``torch.save`` records, read with ``weights_only=True``),
so any DCP of the same version reads their tensors; only the metadata format is ours.

Example::

    save_state({"model": model_sd}, path)  # dcp.save with JsonMetadataWriter
    load_state({"model": model_sd}, path)  # dcp.load with JsonMetadataReader + SafeLoadPlanner
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from nitp.errors import UserError
from nitp.io import atomic_write_text

FORMAT = "nitp-dcp-metadata-json/1"
METADATA_FILE = ".metadata"


# ----------------------------------------------------------------------------- encode
def metadata_to_json(md: Metadata) -> dict:
    """DCP ``Metadata`` as plain JSON values (lists for sizes, dtype names, one row per chunk).

    Example: a float32 tensor ``w`` of shape ``[4, 2]`` in one chunk becomes
    ``{"kind": "tensor", "dtype": "float32", "size": [4, 2], "chunks": [{"offsets": [0, 0],
    "sizes": [4, 2]}], ...}`` under ``state_dict_metadata["w"]``.
    """
    meta = md.storage_meta or StorageMeta()
    return {
        "format": FORMAT,
        "version": md.version,
        "state_dict_metadata": {k: _item_to_json(k, v) for k, v in md.state_dict_metadata.items()},
        "planner_data": {k: list(v) for k, v in (md.planner_data or {}).items()},
        "storage_data": [_storage_to_json(i, s) for i, s in (md.storage_data or {}).items()],
        "storage_meta": {
            "checkpoint_id": None if meta.checkpoint_id is None else str(meta.checkpoint_id),
            "save_id": meta.save_id,
            "modules": list(getattr(meta, "modules", []) or []),
        },
    }


def _item_to_json(fqn: str, item) -> dict:
    if isinstance(item, BytesStorageMetadata):
        return {"kind": "bytes"}
    props = item.properties
    if props.layout != torch.strided:
        raise ValueError(f"DCP item {fqn}: layout {props.layout} has no JSON form (strided only)")
    return {
        "kind": "tensor",
        "dtype": str(props.dtype).removeprefix("torch."),
        "requires_grad": bool(props.requires_grad),
        "pin_memory": bool(props.pin_memory),
        "size": list(item.size),
        "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in item.chunks],
    }


def _storage_to_json(index: MetadataIndex, info: _StorageInfo) -> dict:
    row = {"fqn": index.fqn, "index_offset": None if index.offset is None else list(index.offset)}
    row["index"] = index.index
    row.update({f.name: getattr(info, f.name) for f in dataclasses.fields(info)})
    if row.get("transform_descriptors") is not None:
        row["transform_descriptors"] = list(row["transform_descriptors"])
    return row


# ----------------------------------------------------------------------------- decode
def metadata_from_json(data: dict) -> Metadata:
    """The inverse of :func:`metadata_to_json`; a ``KeyError`` / ``ValueError`` on a malformed dict."""
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
    storage_fields = {f.name for f in dataclasses.fields(_StorageInfo)}
    storage = {}
    for row in data["storage_data"]:
        offset = row["index_offset"]
        index = MetadataIndex(row["fqn"], None if offset is None else torch.Size(offset), row["index"])
        storage[index] = _StorageInfo(**{k: v for k, v in row.items() if k in storage_fields})
    meta = data["storage_meta"]
    return Metadata(
        state_dict_metadata={k: _item_from_json(v) for k, v in data["state_dict_metadata"].items()},
        planner_data={k: tuple(v) for k, v in data["planner_data"].items()},
        storage_data=storage,
        storage_meta=StorageMeta(
            checkpoint_id=meta["checkpoint_id"], save_id=meta["save_id"], modules=list(meta["modules"])
        ),
        version=data["version"],
    )


def _item_from_json(item: dict):
    if item["kind"] == "bytes":
        return BytesStorageMetadata()
    if item["kind"] != "tensor":
        raise ValueError(f"item kind {item['kind']!r}")
    dtype = getattr(torch, str(item["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {item['dtype']!r}")
    props = TensorProperties(dtype=dtype, requires_grad=item["requires_grad"], pin_memory=item["pin_memory"])
    chunks = [ChunkStorageMetadata(torch.Size(c["offsets"]), torch.Size(c["sizes"])) for c in item["chunks"]]
    return TensorStorageMetadata(properties=props, size=torch.Size(item["size"]), chunks=chunks)


def read_metadata_file(path: Path) -> Metadata:
    """Parse ``path`` (a ``.metadata`` written by :class:`JsonMetadataWriter`); never unpickles."""
    raw = Path(path).read_bytes()
    try:
        return metadata_from_json(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"{path}: not nitp's JSON checkpoint metadata ({type(e).__name__}; a pickled DCP file from "
            "another tool or an older nitp is never unpickled): resume from a checkpoint this version wrote"
        ) from None


# ----------------------------------------------------------------------------- storage + planner
class JsonMetadataWriter(FileSystemWriter):
    """``FileSystemWriter`` whose ``finish`` writes the global metadata as JSON, atomically."""

    def finish(self, metadata: Metadata, results) -> None:
        metadata.version = metadata.version or "1.0.0"
        metadata.storage_data = {wr.index: wr.storage_data for wr_list in results for wr in wr_list}
        metadata.storage_meta = self.storage_meta()
        atomic_write_text(Path(self.path) / METADATA_FILE, json.dumps(metadata_to_json(metadata)))


class JsonMetadataReader(FileSystemReader):
    """``FileSystemReader`` whose ``read_metadata`` parses the JSON of :class:`JsonMetadataWriter`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_metadata_file(Path(self.path) / METADATA_FILE)
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` that loads non-tensor items with ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        import pickle

        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(
                f"checkpoint item {read_item.dest_index.fqn} holds an object torch's weights-only loader "
                "refuses (nitp never unpickles checkpoint files): resume from a checkpoint this version wrote"
            ) from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


# ----------------------------------------------------------------------------- save / load
def save_state(state: dict, path) -> None:
    """``dcp.save(state)`` into the folder ``path`` with JSON metadata (collective under a group)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(state, storage_writer=JsonMetadataWriter(str(path)))


def load_state(state: dict, path) -> None:
    """``dcp.load(state)`` in place from what :func:`save_state` wrote, never unpickling.

    A bad ``.metadata`` or a refused item is a one-line ``UserError`` (DCP's wrapping
    ``CheckpointException`` is unwrapped to it).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    read_metadata_file(Path(path) / METADATA_FILE)  # a bad file fails here, before DCP wraps it
    try:
        dcp.load(state, storage_reader=JsonMetadataReader(str(path)), planner=SafeLoadPlanner())
    except CheckpointException as e:
        ours = [exc for exc, _trace in e.failures.values() if isinstance(exc, UserError)]
        if ours:
            raise ours[0] from None
        raise
