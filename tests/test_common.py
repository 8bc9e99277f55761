"""Shared pieces: atomic artifact directories, the image naming scheme, inference batching."""

from __future__ import annotations

import numpy as np
import pytest

from kftune.cluster.images import ImageScheme
from kftune.inference.runners import padded_batches, predict_logits
from kftune.storage.atomic import atomic_directory, write_text_atomic


def test_atomic_directory_appears_only_when_complete(tmp_path):
    final = tmp_path / "artifact"
    with atomic_directory(final) as tmp:
        (tmp / "weights.bin").write_bytes(b"x")
        assert not final.exists()
    assert (final / "weights.bin").read_bytes() == b"x"


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "artifact"
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_empty_refuses_full(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as tmp:
        (tmp / "f").write_text("1")
    assert (tmp_path / "empty" / "f").read_text() == "1"
    with pytest.raises(FileExistsError), atomic_directory(tmp_path / "empty"):
        pass


def test_write_text_atomic(tmp_path):
    write_text_atomic(tmp_path / "a" / "b.txt", "hello")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]


def test_image_scheme(monkeypatch):
    assert ImageScheme("r.io/x/", "t1").image("train") == "r.io/x/kftune-train:t1"
    with pytest.raises(ValueError, match="unknown stage"):
        ImageScheme().image("deploy-everything")
    monkeypatch.setenv("KFTUNE_REGISTRY", "localhost:5001")
    monkeypatch.setenv("KFTUNE_IMAGE_TAG", "dev")
    assert ImageScheme.from_env().image("export") == "localhost:5001/kftune-export:dev"


def test_predict_logits_restores_order():
    import datasets

    ids = [[101, 5, 102], [101, 102], [101, 7, 8, 9, 102]]
    split = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]})
    widths = [arrays["input_ids"].shape[1] for _, arrays in padded_batches(split, 2)]
    assert widths == [5, 2]  # longest first, each batch padded to its own longest
    # a "model" whose logit is the number of real tokens: order must come back as given
    logits = predict_logits(lambda a: np.stack([a["attention_mask"].sum(1), -a["attention_mask"].sum(1)], 1), split, 2)
    assert logits[:, 0].tolist() == [3, 2, 5]
