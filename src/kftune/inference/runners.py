"""Batched prediction over a tokenized split, for PyTorch and ONNX Runtime alike.

Texts are run in length order (so a batch pads to similar lengths) and the logits are put
back in the split's order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kftune.errors import DataError

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class EncodedTexts:
    """Tokenizer output shaped like a ``datasets`` split, for :func:`predict_logits`."""

    def __init__(self, encoding):
        self._columns = {name: encoding[name] for name in MODEL_INPUTS if name in encoding}
        self.column_names = list(self._columns)

    def __getitem__(self, name: str) -> list[list[int]]:
        return self._columns[name]

    def __len__(self) -> int:
        return len(self._columns["input_ids"])


class EmptyText(DataError):
    """A text that is empty once cleaned; ``index`` is its position in the list given."""

    def __init__(self, index: int):
        super().__init__(f"text {index} is empty (after whitespace and markup are removed); expected some text")
        self.index = index


def cleaned_texts(texts: list[str]) -> list[str]:
    """``texts`` cleaned as preprocess cleans them; raises :class:`EmptyText` for the first that comes out empty."""
    from kftune.data.text import clean_text

    cleaned = [clean_text(t) for t in texts]
    for i, text in enumerate(cleaned):
        if not text:
            raise EmptyText(i)
    return cleaned


def encode_texts(tokenizer, inputs: dict[str, list[str]], fields: tuple[str, ...], max_length: int) -> EncodedTexts:
    """Raw texts of each of ``fields`` (one text, or a pair) cleaned and tokenized as preprocess does them."""
    lengths = {len(inputs[name]) for name in fields}
    if len(lengths) > 1:
        raise DataError(f"the fields {', '.join(fields)} hold different numbers of texts: {sorted(lengths)}")
    encoded = tokenizer(*(cleaned_texts(inputs[name]) for name in fields), truncation=True, max_length=max_length)
    return EncodedTexts(encoded)


def padded_batches(split, batch_size: int, pad_id: int = 0):
    """Yield (indices, {input: int64 array}) in length order, padded per batch."""
    inputs = [name for name in MODEL_INPUTS if name in split.column_names]
    columns = {name: split[name] for name in inputs}
    lengths = np.fromiter((len(x) for x in columns["input_ids"]), dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        width = int(lengths[indices].max())
        arrays = {}
        for name in inputs:
            pad = pad_id if name == "input_ids" else 0
            block = np.full((len(indices), width), pad, dtype=np.int64)
            for row, i in enumerate(indices):
                values = columns[name][i]
                block[row, : len(values)] = values
            arrays[name] = block
        yield indices, arrays


def predict_logits(run_batch: Callable[[dict], np.ndarray], split, batch_size: int, pad_id: int = 0) -> np.ndarray:
    """Logits for every example of ``split``, in the split's order: ``[examples, labels]``, or for per-piece logits
    ``[examples, longest, labels]`` (zero past each example's pieces)."""
    out, lengths = None, np.fromiter((len(x) for x in split["input_ids"]), dtype=np.int64)
    for indices, arrays in padded_batches(split, batch_size, pad_id):
        logits = np.asarray(run_batch(arrays), dtype=np.float32)
        if out is None:
            shape = (len(split), *logits.shape[1:])
            if logits.ndim == 3:  # per-piece logits (token classification): zero-padded to the longest example
                shape = (len(split), lengths.max(), logits.shape[2])
            out = np.zeros(shape, dtype=np.float32)
        if logits.ndim == 3:  # zero past each example's pieces (where models differ: padding-free ones give the bias)
            real = np.arange(logits.shape[1])[None, :] < lengths[indices][:, None]
            out[indices, : logits.shape[1]] = logits * real[:, :, None]
        else:
            out[indices] = logits
    return out


def torch_runner(model):
    """A ``run_batch`` for a Hugging Face PyTorch model, in fp32 and inference mode, padding-free where the
    architecture allows (:mod:`~kftune.training.unpadded`)."""
    import torch

    from kftune.training.unpadded import enable_padding_free

    model.eval()
    enable_padding_free(model)

    def run(arrays: dict) -> np.ndarray:
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
            return model(**tensors).logits.float().numpy()

    return run


def onnx_runner(session):
    """A ``run_batch`` for an ONNX Runtime session (feeds only the inputs the graph takes)."""
    names = [i.name for i in session.get_inputs()]

    def run(arrays: dict) -> np.ndarray:
        return session.run(None, {k: arrays[k] for k in names})[0]

    return run


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of logits over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Independent probabilities of logits (multi-label)."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))
