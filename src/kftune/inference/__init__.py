"""Inference layer: running a trained or exported model: batched runners (:mod:`~kftune.inference.runners`), greedy
generation (:mod:`~kftune.inference.generation`) and an export directory opened for serving and batch prediction
(:mod:`~kftune.inference.exported`)."""
