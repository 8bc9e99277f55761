"""One naming scheme for every component image: ``{registry}/kftune-{stage}:{tag}``.

Registry and tag are chosen when a pipeline is compiled (``kftune compile --registry R
--tag T``, or the KFTUNE_REGISTRY / KFTUNE_IMAGE_TAG environment variables); the Makefile
and the kind scripts build and push under the same names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kftune import __version__

STAGES = ("preprocess", "pretrain", "train", "tune", "evaluate", "export", "predict", "publish", "serve", "deploy")
DEFAULT_REGISTRY = "ghcr.io/kftune"


@dataclass(frozen=True)
class ImageScheme:
    """Where the component images live."""

    registry: str = DEFAULT_REGISTRY
    """Image registry of the component images ($KFTUNE_REGISTRY where set)."""
    tag: str = __version__
    """Image tag of the component images ($KFTUNE_IMAGE_TAG where set, else the package version)."""

    def image(self, stage: str) -> str:
        """The image of one stage."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        return f"{self.registry.rstrip('/')}/kftune-{stage}:{self.tag}"

    @classmethod
    def from_env(cls) -> ImageScheme:
        """The scheme named by KFTUNE_REGISTRY / KFTUNE_IMAGE_TAG, else the defaults."""
        return cls(
            registry=os.environ.get("KFTUNE_REGISTRY", DEFAULT_REGISTRY),
            tag=os.environ.get("KFTUNE_IMAGE_TAG", __version__),
        )
