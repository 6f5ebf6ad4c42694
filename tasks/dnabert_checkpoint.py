"""DNABERT checkpoints: which files make one, its id, loading it offline, packing it.

Checkpoint layout (DNABERT's, i.e. a plain Hugging Face BERT directory):
`config.json` (a BertConfig; `model_type` may be absent, as in DNABERT's own files),
`vocab.txt`, and weights as `model.safetensors` or `pytorch_model.bin` (or sharded with
an index). A DNABERT-6 download (zhihan1996/DNA_bert_6) loads unchanged, offline
(`from_pretrained(dir, local_files_only=True)`). `pretrain` writes the same layout plus
`tokenizer_config.json` (`do_lower_case: false`, so Hugging Face's own tokenizer does not
lower-case k-mers into [UNK]) and `helixflow.json` (training metadata).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from helixflow.errors import InputError
from helixflow.tables import pack_files
from helixflow.tasks.dnabert_tokens import KmerTokenizer

if TYPE_CHECKING:  # heavy imports stay lazy: Prefect tasks import this module cheaply
    from transformers import BertModel

WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (they are not errors here).

    Returns:
        A context manager; the previous verbosity and progress-bar setting are restored on
        exit.
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The files that define a checkpoint: config.json, vocab.txt and the weights.

    Raises InputError naming what is missing.

    Args:
        model_dir: the checkpoint directory.

    Returns:
        config.json, vocab.txt, then the weight files (with the shards a *.index.json names).

    Raises:
        InputError: `model_dir` is not a directory or lacks config.json, vocab.txt or weights.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(str(model_dir), "no such model directory")
    missing = [name for name in ("config.json", "vocab.txt") if not (model_dir / name).is_file()]
    weights = [model_dir / name for name in WEIGHT_FILES if (model_dir / name).is_file()]
    if not weights:
        missing.append("model.safetensors or pytorch_model.bin")
    if missing:
        raise InputError(
            str(model_dir),
            f"not a BERT checkpoint in DNABERT's layout: missing {', '.join(missing)}",
            hint="a model directory holds config.json, vocab.txt and the weights "
            "(as a DNABERT download or `pretrain` writes them)",
        )
    for index in [w for w in weights if w.suffix == ".json"]:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights += [model_dir / s for s in shards]
    return [model_dir / "config.json", model_dir / "vocab.txt", *weights]


def model_digest(model_dir: str | Path) -> str:
    """sha256 over the checkpoint's files (names and bytes): the model's id for lineage.

    Args:
        model_dir: the checkpoint directory.

    Returns:
        The sha256 as 64 hex characters (independent of the directory's path).

    Raises:
        InputError: `model_dir` is not a complete checkpoint.
    """
    digest = hashlib.sha256()
    for path in sorted(checkpoint_files(model_dir), key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_model(model_dir: str | Path) -> tuple[BertModel, KmerTokenizer]:
    """BertModel (eval mode, no pooler) and tokenizer of a checkpoint directory, offline.

    Works for a BertForMaskedLM or BertModel checkpoint in safetensors or the older
    pytorch_model.bin. Raises InputError for a missing file or a vocabulary that is not
    DNABERT's layout or does not match the config's vocab_size.

    Args:
        model_dir: the checkpoint directory (read with local_files_only).

    Returns:
        The model and the KmerTokenizer read from vocab.txt.

    Raises:
        InputError: a missing file, or a vocabulary that does not fit the config.
    """
    from transformers import BertConfig, BertModel

    model_dir = Path(model_dir)
    checkpoint_files(model_dir)
    tokenizer = KmerTokenizer.from_file(model_dir / "vocab.txt")
    config = BertConfig.from_pretrained(model_dir, local_files_only=True)
    if config.vocab_size != len(tokenizer.vocab):
        raise InputError(
            str(model_dir / "config.json"),
            f"vocab_size {config.vocab_size} != {len(tokenizer.vocab)} tokens in vocab.txt "
            f"(4^{tokenizer.k} + 5)",
        )
    with quiet_transformers():
        model = BertModel.from_pretrained(
            model_dir, config=config, local_files_only=True, add_pooling_layer=False
        )
    model.eval()
    return model, tokenizer


def max_tokens_of(model: BertModel) -> int:
    """Longest input the model takes, [CLS] and [SEP] included (512 for DNABERT).

    Args:
        model: a loaded BERT model.

    Returns:
        The config's max_position_embeddings.
    """
    return int(model.config.max_position_embeddings)


def loss_curve(model_dir: str | Path) -> list[float]:
    """Training loss per step recorded by `pretrain` in helixflow.json.

    Args:
        model_dir: a checkpoint directory written by `pretrain`.

    Returns:
        The loss of each training step, in order.
    """
    return list(json.loads((Path(model_dir) / "helixflow.json").read_text())["losses"])


def pack_checkpoint(model_dir: Path, out: Path) -> Path:
    """A checkpoint directory as one reproducible tar (same model, same sha256).

    Args:
        model_dir: the checkpoint directory; helixflow.json is included when present.
        out: the tar file to write.

    Returns:
        `out`, as `pack_files` returns it.

    Raises:
        InputError: `model_dir` is not a complete checkpoint.
    """
    files = [*checkpoint_files(model_dir), Path(model_dir) / "helixflow.json"]
    return pack_files([f for f in files if f.exists()], out)
