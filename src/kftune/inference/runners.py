"""Batched prediction over a tokenized split, for PyTorch and ONNX Runtime alike.

Texts are run in length order (so a batch pads to similar lengths) and the logits are put
back in the split's order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
