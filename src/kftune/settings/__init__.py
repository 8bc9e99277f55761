"""Settings layer: a setting is declared once, as a typed dataclass field with an attribute docstring
(:mod:`~kftune.settings.fields`); the KFP signatures are derived from it (:mod:`~kftune.settings.signatures`)."""
