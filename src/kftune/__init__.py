"""kftune: Kubeflow Pipelines components that fine-tune pretrained transformers for text classification.

Stages live in :mod:`kftune.components` (one sub-package per stage, logic apart from the
thin KFP ``component.py``), pipelines in :mod:`kftune.pipelines`, the CLI in :mod:`kftune.cli`.
"""

__version__ = "0.1.0"
