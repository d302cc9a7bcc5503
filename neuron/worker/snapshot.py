"""Find a model's local snapshot and read what a torch-free parent needs to know about it.

Resolves a model id against the configured model roots, in either the plain
`org/name` layout or the Hugging Face cache layout (`models--org--name/snapshots/<rev>`,
honouring `refs/main`, else the newest snapshot) or a GGUF file (`name.gguf`,
converted once into a cached snapshot by `neuron.worker.gguf`), plus absolute paths
when the operator allows them. Ids that could escape the roots are refused, and so is any
snapshot whose real path (or whose files' real paths) leaves its root. Then it reads
`config.json` and `generation_config.json` into a `SnapshotInfo`: eos ids, sampling
defaults, context length, chat template location, weight bytes, KV bytes per token.

Not for: loading weights (that is `loader`, which imports torch) or downloading.
This module must never import torch: the neuron parent process uses it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import frozen

from neuron.worker import gguf
from neuron.worker.errors import InvalidSnapshot, ModelNotFound, UnsafeModelId
from protocol.ids import ModelId

SnapshotLayout = Literal["plain", "hf-cache", "absolute", "gguf"]

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_REVISION = re.compile(r"[A-Za-z0-9._-]+")
_MAX_ID_CHARS = 256
_MAX_LISTED = 10_000  # directory entries scanned per root for near-miss suggestions
_MAX_SNAPSHOT_ENTRIES = 10_000


@frozen
class ResolvedSnapshot:
    """A snapshot directory that passed every containment check."""

    model_id: ModelId
    path: Path  # real path of the snapshot directory
    root: Path | None  # real path of the model root; None for an absolute id
    layout: SnapshotLayout
    revision: str | None  # the HF cache revision, for that layout
    # The GGUF file a "gguf" snapshot comes from; `path` is that file until
    # `inspect_model` converts it, then the converted snapshot directory.
    source: Path | None = None


@frozen
class GenerationDefaults:
    """Sampling defaults from `generation_config.json`; None where it is silent."""

    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None


@frozen
class SnapshotInfo:
    snapshot: ResolvedSnapshot
    model_type: str | None
    architectures: tuple[str, ...]
    declared_dtype: str | None
    vocab_size: int | None
    max_position_embeddings: int | None
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    pad_token_id: int | None
    num_hidden_layers: int | None
    num_key_value_heads: int | None
    head_dim: int | None
    chat_template_file: Path | None  # chat_template.jinja, or tokenizer_config.json
    has_tokenizer: bool
    weight_files: tuple[Path, ...]
    weight_bytes: int
    generation: GenerationDefaults

    def kv_bytes_per_token(self, dtype_bytes: int) -> int | None:
        """K and V bytes one token occupies across all layers, if the config says."""
        dims = (self.num_hidden_layers, self.num_key_value_heads, self.head_dim)
        if None in dims:
            return None
        layers, heads, head_dim = dims
        return 2 * layers * heads * head_dim * dtype_bytes


def inspect_model(
    model_id: str, roots: Sequence[Path], *, allow_absolute: bool = False
) -> SnapshotInfo:
    """Resolve `model_id` and read its snapshot: the parent's one-call entry point.

    A GGUF file is converted first (once; a child process does it, see `gguf`).
    """
    snapshot = resolve_snapshot(model_id, roots, allow_absolute=allow_absolute)
    if snapshot.layout == "gguf":
        snapshot = attrs.evolve(snapshot, path=gguf.converted(snapshot.path), source=snapshot.path)
    return read_snapshot_info(snapshot)


# -- resolution -----------------------------------------------------------------------


def resolve_snapshot(
    model_id: str, roots: Sequence[Path], *, allow_absolute: bool = False
) -> ResolvedSnapshot:
    """Find the snapshot directory for `model_id`, or raise ModelNotFound/UnsafeModelId.

    Roots are tried in order; within a root the plain layout wins over the HF cache.
    """
    check_model_id(model_id, allow_absolute=allow_absolute)
    if model_id.startswith("/"):
        return _resolve_absolute(ModelId(model_id))
    for root in roots:
        found = _resolve_in_root(ModelId(model_id), Path(root))
        if found is not None:
            return found
    searched = ", ".join(str(r) for r in roots) or "(no model roots configured)"
    hint = _did_you_mean(model_id, available_model_ids(roots))
    raise ModelNotFound(f"model {model_id!r} not found under the model roots: {searched}{hint}")


def available_model_ids(roots: Sequence[Path], *, limit: int = _MAX_LISTED) -> list[str]:
    """The ids a root holds, in either layout, sorted: `name`, `org/name` and the
    `models--org--name` HF cache entries with at least one snapshot. Stops after
    `limit` directory entries per root so a huge or hostile root stays cheap."""
    found: set[str] = set()
    for root in roots:
        found.update(_ids_in_root(Path(root), limit))
        found.update(_gguf_ids_in_root(Path(root), limit))
    return sorted(found)


def _gguf_ids_in_root(root: Path, limit: int) -> Iterable[str]:
    """`name` for `root/name.gguf`, `org/name` for `root/org/name.gguf`."""
    for entry in _gguf_files(root, limit):
        yield entry.name.removesuffix(gguf.SUFFIX)
    for directory in _entries(root, limit):
        for entry in _gguf_files(directory, limit):
            yield f"{directory.name}/{entry.name.removesuffix(gguf.SUFFIX)}"


def _gguf_files(directory: Path, limit: int) -> list[Path]:
    try:
        with os.scandir(directory) as it:
            files = []
            for entry in it:
                if len(files) >= limit:
                    break
                name = entry.name
                if name.endswith(gguf.SUFFIX) and not name.startswith(".") and entry.is_file():
                    files.append(Path(entry.path))
            return files
    except OSError:
        return []


def _ids_in_root(root: Path, limit: int) -> Iterable[str]:
    for entry in _entries(root, limit):
        name = entry.name
        if name.startswith("models--"):
            parts = name.removeprefix("models--").split("--")
            if 1 <= len(parts) <= 2 and _hf_cache_snapshot(entry) is not None:
                yield "/".join(parts)
        elif (entry / "config.json").is_file():
            yield name
        else:
            for inner in _entries(entry, limit):
                if (inner / "config.json").is_file():
                    yield f"{name}/{inner.name}"


def _entries(directory: Path, limit: int) -> list[Path]:
    try:
        with os.scandir(directory) as it:
            entries = []
            for entry in it:
                if len(entries) >= limit:
                    break
                if not entry.name.startswith(".") and entry.is_dir():
                    entries.append(Path(entry.path))
            return entries
    except OSError:
        return []


def _did_you_mean(model_id: str, candidates: Sequence[str]) -> str:
    """`; did you mean 'a' or 'b'?` for near misses (case, a typo, a missing org), or ''."""
    folded = {c.lower(): c for c in candidates}
    close = [folded[m] for m in difflib.get_close_matches(model_id.lower(), folded, n=3,
                                                          cutoff=0.75)]  # fmt: skip
    tail = model_id.rsplit("/", 1)[-1].lower()
    close += [c for c in candidates if c.rsplit("/", 1)[-1].lower() == tail and c not in close]
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close[:3]) + "?"


def snapshot_at(model_id: str, path: Path) -> ResolvedSnapshot:
    """A snapshot the parent already resolved (e.g. a `LoadModel` job's path), as given.

    The worker uses this: the containment checks ran in the parent, against the roots
    only the parent knows.
    """
    real = Path(os.path.realpath(path))
    if not (real / "config.json").is_file():
        raise ModelNotFound(f"model {model_id!r}: no config.json in {real}")
    return ResolvedSnapshot(ModelId(model_id), real, None, "absolute", None)


def check_model_id(model_id: str, *, allow_absolute: bool = False) -> None:
    """Raise UnsafeModelId unless `model_id` is `name`, `org/name` or an allowed abs path."""
    problem = _id_problem(model_id, allow_absolute)
    if problem is not None:
        raise UnsafeModelId(f"refusing model id {model_id!r}: {problem}")


def _id_problem(model_id: str, allow_absolute: bool) -> str | None:
    if not isinstance(model_id, str) or not model_id:
        return "it is empty"
    if len(model_id) > _MAX_ID_CHARS:
        return f"it is longer than {_MAX_ID_CHARS} characters"
    if "\0" in model_id:
        return "it contains a NUL byte"
    if "\\" in model_id:
        return "it contains a backslash"
    segments = model_id.split("/")
    if any(s in (".", "..") for s in segments):
        return "it contains a '.' or '..' path segment"
    if model_id.startswith("/"):
        return None if allow_absolute else "absolute paths are not allowed on this node"
    return _relative_id_problem(segments)


def _relative_id_problem(segments: list[str]) -> str | None:
    if not all(segments):
        return "it has an empty path segment"
    if len(segments) > 2:
        return "expected 'name' or 'org/name'"
    for segment in segments:
        if not _SEGMENT.fullmatch(segment) or "--" in segment:
            return f"segment {segment!r} is not a valid repository name"
    return None


def _resolve_absolute(model_id: ModelId) -> ResolvedSnapshot:
    real = Path(os.path.realpath(model_id))
    if real.name.endswith(gguf.SUFFIX) and real.is_file():
        return ResolvedSnapshot(model_id, real, None, "gguf", None)
    if not (real / "config.json").is_file():
        raise ModelNotFound(f"model {model_id!r}: no config.json in {real}")
    return ResolvedSnapshot(model_id, real, None, "absolute", None)


def _resolve_in_root(model_id: ModelId, root: Path) -> ResolvedSnapshot | None:
    real_root = Path(os.path.realpath(root))
    plain = root / model_id
    if (plain / "config.json").is_file():
        path = _contained(model_id, plain, real_root)
        return ResolvedSnapshot(model_id, path, real_root, "plain", None)
    repo_dir = root / ("models--" + model_id.replace("/", "--"))
    snapshot = _hf_cache_snapshot(repo_dir)
    if snapshot is None:
        return _resolve_gguf(model_id, root, real_root)
    path = _contained(model_id, snapshot, real_root)
    return ResolvedSnapshot(model_id, path, real_root, "hf-cache", snapshot.name)


def _resolve_gguf(model_id: ModelId, root: Path, real_root: Path) -> ResolvedSnapshot | None:
    file = root / f"{model_id}{gguf.SUFFIX}"
    if not file.is_file():
        return None
    real = Path(os.path.realpath(file))
    if not _is_within(real, real_root):
        raise UnsafeModelId(
            f"refusing model id {model_id!r}: {file} resolves to {real}, "
            f"outside the model root {real_root}"
        )
    return ResolvedSnapshot(model_id, real, real_root, "gguf", None)


def _hf_cache_snapshot(repo_dir: Path) -> Path | None:
    """`snapshots/<refs/main>` if it is a snapshot, else the newest snapshot, else None."""
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = _read_ref(repo_dir / "refs" / "main")
    if ref is not None and (snapshots / ref / "config.json").is_file():
        return snapshots / ref
    candidates = [p for p in snapshots.iterdir() if (p / "config.json").is_file()]
    return max(candidates, key=lambda p: (p.stat().st_mtime, p.name), default=None)


def _read_ref(ref_file: Path) -> str | None:
    try:
        ref = ref_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return ref if _REVISION.fullmatch(ref) and ref not in (".", "..") else None


def _contained(model_id: ModelId, snapshot: Path, real_root: Path) -> Path:
    """The snapshot's real path, if it and every entry in it stay inside `real_root`."""
    real = Path(os.path.realpath(snapshot))
    if not _is_within(real, real_root):
        raise UnsafeModelId(
            f"refusing model id {model_id!r}: {snapshot} resolves to {real}, "
            f"outside the model root {real_root}"
        )
    for entry in _walk(snapshot):
        target = Path(os.path.realpath(entry))
        if not _is_within(target, real_root):
            raise UnsafeModelId(
                f"refusing model id {model_id!r}: {entry} resolves to {target}, "
                f"outside the model root {real_root}"
            )
    return real


def _walk(top: Path) -> Iterable[Path]:
    count = 0
    # followlinks: a symlinked directory inside the root must have its files checked too.
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        for name in (*dirnames, *filenames):
            count += 1
            if count > _MAX_SNAPSHOT_ENTRIES:
                raise InvalidSnapshot(f"{top} holds more than {_MAX_SNAPSHOT_ENTRIES} entries")
            yield Path(dirpath) / name


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# -- reading --------------------------------------------------------------------------


def read_snapshot_info(snapshot: ResolvedSnapshot) -> SnapshotInfo:
    """Read config.json (+ generation_config.json) of a resolved snapshot."""
    path = snapshot.path
    config = _read_json(path / "config.json", required=True)
    text = _text_config(config)
    generation = _read_json(path / "generation_config.json", required=False)
    weights = tuple(sorted(path.glob("*.safetensors")))
    if not weights:
        raise InvalidSnapshot(f"model {snapshot.model_id!r}: no .safetensors weights in {path}")
    return SnapshotInfo(
        snapshot=snapshot,
        model_type=config.get("model_type"),
        architectures=tuple(config.get("architectures") or ()),
        declared_dtype=config.get("dtype") or config.get("torch_dtype"),
        vocab_size=_int(text, "vocab_size"),
        max_position_embeddings=_int(text, "max_position_embeddings"),
        eos_token_ids=_eos_ids(config, text, generation),
        bos_token_id=_first_int(generation, text, "bos_token_id"),
        pad_token_id=_first_int(generation, text, "pad_token_id"),
        num_hidden_layers=_int(text, "num_hidden_layers"),
        num_key_value_heads=_int(text, "num_key_value_heads") or _int(text, "num_attention_heads"),
        head_dim=_head_dim(text),
        chat_template_file=_chat_template_file(path),
        has_tokenizer=(path / "tokenizer.json").is_file(),
        weight_files=weights,
        weight_bytes=sum(w.stat().st_size for w in weights),
        generation=_generation_defaults(generation),
    )


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise InvalidSnapshot(f"{path} is missing") from None
        return {}
    except (OSError, ValueError) as exc:
        raise InvalidSnapshot(f"{path} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidSnapshot(f"{path} does not hold a JSON object")
    return data


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs nest the language model's settings under `text_config`."""
    nested = config.get("text_config")
    return {**config, **nested} if isinstance(nested, dict) else config


def _int(config: dict[str, Any], key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _first_int(first: dict[str, Any], second: dict[str, Any], key: str) -> int | None:
    value = _int(first, key)
    return value if value is not None else _int(second, key)


def _ids(value: object) -> set[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, int) and not isinstance(v, bool)}
    return set()


def _eos_ids(config: dict, text: dict, generation: dict) -> tuple[int, ...]:
    """The union of every eos id declared: stopping on one more id never hurts."""
    found = _ids(config.get("eos_token_id")) | _ids(text.get("eos_token_id"))
    return tuple(sorted(found | _ids(generation.get("eos_token_id"))))


def _head_dim(text: dict[str, Any]) -> int | None:
    head_dim = _int(text, "head_dim")
    hidden, heads = _int(text, "hidden_size"), _int(text, "num_attention_heads")
    if head_dim is None and hidden and heads:
        return hidden // heads
    return head_dim


def _chat_template_file(path: Path) -> Path | None:
    if (path / "chat_template.jinja").is_file():
        return path / "chat_template.jinja"
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.is_file() and "chat_template" in _read_json(
        tokenizer_config, required=False
    ):
        return tokenizer_config
    return None


def _generation_defaults(generation: dict[str, Any]) -> GenerationDefaults:
    def number(key: str) -> float | None:
        value = generation.get(key)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else None

    do_sample = generation.get("do_sample")
    return GenerationDefaults(
        do_sample=do_sample if isinstance(do_sample, bool) else None,
        temperature=number("temperature"),
        top_p=number("top_p"),
        top_k=_int(generation, "top_k"),
        min_p=number("min_p"),
        repetition_penalty=number("repetition_penalty"),
        max_new_tokens=_int(generation, "max_new_tokens"),
    )
