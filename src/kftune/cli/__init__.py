"""The ``kftune`` command line: ``kftune run``/``tune`` (local pipelines), ``compile``, ``submit``, ``serve``,
``predict`` (:mod:`kftune.cli.main`), its console (:mod:`kftune.cli.console`), the flags derived from the settings
dataclasses (:mod:`kftune.cli.flags`), the KFP client (:mod:`kftune.cli.submit`) and the README settings tables
(:mod:`kftune.cli.settings_docs`). No layer and no stage imports it."""
