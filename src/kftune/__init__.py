"""kftune: Kubeflow Pipelines components that fine-tune pretrained transformers, one task package per kind of task.

Stages live in :mod:`kftune.components` (one sub-package per stage, logic apart from the thin KFP
``component.py``), pipelines in :mod:`kftune.pipelines`, the CLI in :mod:`kftune.cli`; the code they share is
in layers named for what they hold (:mod:`kftune.settings`, :mod:`kftune.data`, :mod:`kftune.tasks`,
:mod:`kftune.training`, :mod:`kftune.models`, :mod:`kftune.inference`, :mod:`kftune.cluster`,
:mod:`kftune.storage`).
"""

__version__ = "0.1.0"
