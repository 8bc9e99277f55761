"""Data layer: what travels between stages (:mod:`~kftune.data.schema`), the file readers (:mod:`~kftune.data.files`),
text cleaning, chat templates and the bundled data sets and models."""
