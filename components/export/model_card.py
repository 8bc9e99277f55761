"""The model card of an export: a Hugging Face ``README.md`` (YAML metadata, then Markdown), filled from what the
pipeline knows, never by hand.

What it says, and where each part comes from:

- the base model: the train step's ``base_model`` (what the run started from), else the trained model's
  ``training_history.json``; its Hub id and licence where it is a bundled model
  (:data:`~kftune.data.bundled.MODEL_PROVENANCE`), ``unknown`` otherwise;
- the data: the ``data`` setting preprocess read (its ``stats.json``), a sha256 of the split files
  (:func:`~kftune.data.schema.splits_sha256`; preprocess records no digest), the split sizes, and its licence where
  it is a bundled data set, ``unknown`` otherwise;
- the test scores with their paired bootstrap intervals, the baselines', the gains and the gate: evaluate's result,
  as it is (``model-index`` holds the model's scores exactly as the result has them); without a result the card says
  the model was not evaluated;
- the training settings: the resolved ``TrainConfig`` in ``training_history.json``;
- what it is for, its limits, and how to serve it and predict with it: from the task and the figures above.

The metadata follows the Hub's schema (``base_model``, ``pipeline_tag``, ``library_name``, ``license``, ``language``,
``tags``, ``model-index``), built with ``huggingface_hub``'s ``ModelCardData`` and ``EvalResult``, so that
``huggingface_hub.ModelCard.load`` reads it back; a ``kftune`` key holds what the schema has no place for (the data
digest, the intervals, the baselines, the gate).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields
from pathlib import Path

from kftune.data.bundled import bundled_provenance
from kftune.data.schema import MODEL_CARD, STATS_FILE, splits_sha256
from kftune.tasks.bootstrap import LEVEL

HISTORY_FILE = "training_history.json"
LIBRARY = {"onnx": "onnx", "huggingface": "transformers"}
"""The card's ``library_name`` per export format."""
FORMAT_TEXT = {
    "onnx": "an ONNX graph of the logits (`model.onnx`, dynamic batch and sequence axes) with its tokenizer, "
            "checked against PyTorch on the test split",
    "huggingface": "a Hugging Face model directory (the merged weights, tokenizer and chat template; the LoRA "
                   "adapter alone in `adapter/` where one was trained), reloaded and checked against the trained model",
}
UNKNOWN = "unknown"
LEVEL_TEXT = f"{LEVEL:.0%}"
LISTED_LABELS = 50
"""Labels named in the card's text at most (a token-classification tag set can be long)."""


def write_model_card(export_dir: Path, task, export_format: str, model_dir: Path, dataset_dir: Path, test_dir: Path,
                     info: dict, files: dict, evaluation: dict | None = None, base_model: str = "") -> dict:
    """Write the card into ``export_dir`` (replacing a base model's ``README.md``); return what the export report
    and the artifact's metadata say of it (its file, base model, licence, data digest, gate)."""
    card = build_model_card(task, export_format, model_dir, dataset_dir, test_dir, info, files, evaluation, base_model)
    card.save(Path(export_dir) / MODEL_CARD)
    facts = card.data.kftune
    return {"file": MODEL_CARD, "base_model": facts["base_model"], "license": card.data.license,
            "data_sha256": facts["data"]["sha256"], "gate": facts["gate"]}


def build_model_card(task, export_format: str, model_dir: Path, dataset_dir: Path, test_dir: Path, info: dict,
                     files: dict, evaluation: dict | None = None, base_model: str = ""):
    """The card (a ``huggingface_hub.ModelCard``) of a model of ``task`` trained in ``model_dir`` on preprocess's
    artifacts ``dataset_dir`` and ``test_dir``, exported in ``export_format`` as ``files``; ``info`` is its
    ``task.json``, ``evaluation`` evaluate's result (None: not evaluated), ``base_model`` the train step's name of
    what training started from (empty: the one ``training_history.json`` records)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    # the result as the pipeline passes it (JSON): plain numbers, which the YAML keeps exactly
    evaluation = json.loads(json.dumps(evaluation)) if evaluation is not None else None
    history = _read_json(Path(model_dir) / HISTORY_FILE)
    base = base_model_facts(base_model or history.get("config", {}).get("model", ""))
    data = data_facts(dataset_dir, test_dir)
    name = f"kftune-{task.name}-{base['short_name']}"
    scores = model_scores(task, evaluation) if evaluation else {}
    eval_results = [
        EvalResult(task_type=task.pipeline_tag, task_name=task.name, dataset_type=data["source"],
                   dataset_name=data["source"], dataset_split="test", dataset_revision=data["sha256"],
                   metric_type=metric, metric_name=metric, metric_value=value)
        for metric, value in scores.items() if math.isfinite(value)]
    training_mode = history.get("config", {}).get("training_mode", "")
    card_data = ModelCardData(
        model_name=name,
        base_model=base["hub_id"],
        pipeline_tag=task.pipeline_tag,
        library_name=LIBRARY.get(export_format),
        license=base["license"],
        language=data["language"],
        tags=["kftune", task.name, export_format, *([training_mode] if training_mode else [])],
        eval_results=eval_results or None,
        kftune={
            "task": task.name,
            "export_format": export_format,
            "base_model": base["name"],
            "data": {"source": data["source"], "sha256": data["sha256"], "license": data["license"],
                     "split_sizes": data["split_sizes"]},
            "gate": gate_verdict(evaluation),
            **({"evaluation": evaluation_facts(task, evaluation)} if evaluation else {}),
        },
    )
    sections = [
        f"# {name}",
        summary_section(task, export_format, base, data, evaluation),
        model_section(task, export_format, base, info, files, training_mode),
        data_section(data),
        evaluation_section(task, evaluation, scores),
        use_section(task, info, data, evaluation),
        limitations_section(base, data, evaluation),
        how_to_use_section(task),
        training_section(history),
        licence_section(base, data),
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


# --- facts ----------------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
"""What ``resolve_model`` passes on to the Hub as a model id (``bert-base-uncased``, ``org/name``)."""


def base_model_facts(name: str) -> dict:
    """The base model as the card states it: ``name`` (as training named it), its Hub id (None where it has none:
    a local directory, an object-store URI), its licence and what that rests on, and a short name."""
    # the train step names a model the pretrain step pretrained further "<model> (pretrained by the pretrain step)"
    model = name.split(" (")[0].strip()
    provenance = bundled_provenance(model)
    if provenance:
        hub_id, licence, note = provenance.hub_id, provenance.license, provenance.note
    elif HUB_ID.fullmatch(model) and not Path(model).exists():
        hub_id, licence, note = model, UNKNOWN, "a Hugging Face Hub model; kftune does not record its licence"
    else:
        hub_id, licence, note = None, UNKNOWN, "not a bundled model: kftune does not know its licence"
    short = (hub_id or model.rstrip("/")).rsplit("/", 1)[-1].removeprefix("bundled:") or UNKNOWN
    return {"name": name or UNKNOWN, "hub_id": hub_id, "license": licence, "license_note": note,
            "short_name": re.sub(r"[^\w.-]+", "-", short)}


def data_facts(dataset_dir: Path, test_dir: Path) -> dict:
    """The data as the card states it: its source (preprocess's ``data`` setting), the sha256 of the split files,
    split sizes, the token limit and what reached it, its licence and language where it is bundled."""
    stats = _read_json(Path(dataset_dir) / STATS_FILE)
    config = stats.get("config", {})
    source = config.get("data") or stats.get("source") or UNKNOWN
    provenance = bundled_provenance(source)
    return {
        "source": source,
        "sha256": splits_sha256(dataset_dir, test_dir),
        "split_sizes": stats.get("split_sizes", {}),
        "rows_read": stats.get("rows_read"),
        "rows_used": stats.get("rows_used"),
        "max_seq_length": config.get("max_seq_length"),
        "truncated_fraction": stats.get("token_length", {}).get("truncated_fraction"),
        "license": provenance.license if provenance else UNKNOWN,
        "license_note": provenance.note if provenance else "not a bundled data set: kftune does not know its licence",
        "language": provenance.language if provenance and provenance.language else None,
    }


def model_scores(task, evaluation: dict) -> dict:
    """The model's test scores the task reports (:meth:`~kftune.tasks.base.Task.result_metrics`), as the result has
    them."""
    return {k: evaluation["model"][k] for k in task.result_metrics(evaluation)
            if isinstance(evaluation["model"].get(k), int | float) and not isinstance(evaluation["model"][k], bool)}


def gate_verdict(evaluation: dict | None) -> str:
    if evaluation is None:
        return "not evaluated"
    return "passed" if evaluation["passed"] else "failed"


def evaluation_facts(task, evaluation: dict) -> dict:
    """What the metadata keeps of the result besides the model's scores: the test size, the baselines' scores, the
    gains and their intervals (the result's ``intervals``: ``model_ci_*`` of the score, ``ci_*`` of its gain), the
    gate's checks."""
    keys = task.result_metrics(evaluation)
    facts = {
        "test_size": evaluation["test_size"],
        "primary_metric": evaluation.get("primary_metric") or task.primary,
        "baseline": evaluation["baseline"],
        "baselines": {name: {k: s[k] for k in keys if isinstance(s.get(k), int | float)}
                      for name, s in evaluation["baselines"].items()},
        "delta_vs_baseline": evaluation["delta_vs_baseline"],
        "checks": evaluation["checks"],
    }
    if "intervals" in evaluation:
        facts |= {"intervals": evaluation["intervals"], "interval_level": LEVEL, "resamples": evaluation["resamples"]}
    return facts


# --- sections -------------------------------------------------------------------------------------------------------

def _number(value) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row) + " |"
              for row in rows]
    return "\n".join(lines)


def summary_section(task, export_format: str, base: dict, data: dict, evaluation: dict | None) -> str:
    verdict = gate_verdict(evaluation)
    result = (f"On its held-out test split ({evaluation['test_size']} examples) it was scored against the task's "
              f"baselines and the pipeline's gate **{verdict}**." if evaluation else
              "**This model was not evaluated**: no test scores are known for it.")
    return (f"`{base['name']}` fine-tuned by [kftune](https://github.com/kftune/kftune) for **{task.name}** "
            f"({task.summary}) on `{data['source']}`, exported as {FORMAT_TEXT.get(export_format, export_format)}. "
            f"{result}")


def model_section(task, export_format: str, base: dict, info: dict, files: dict, training_mode: str) -> str:
    rows = [["base model", f"`{base['name']}`" + (f" (Hub: `{base['hub_id']}`)" if base["hub_id"] else "")],
            ["task", f"{task.name}: {task.summary}"],
            ["pipeline tag", task.pipeline_tag],
            ["training mode", training_mode or "not recorded"],
            ["export format", export_format],
            ["files", ", ".join(f"`{f}`" for f in files.values())]]
    labels = info.get("labels") or []
    if labels:
        shown = ", ".join(f"`{label}`" for label in labels[:LISTED_LABELS])
        rows.append([f"labels ({len(labels)})", shown + (", ..." if len(labels) > LISTED_LABELS else "")])
    if info.get("answers"):
        rows.append(["allowed answers", ", ".join(f"`{a}`" for a in info["answers"])])
    return "## Model\n\n" + _table(["", ""], rows)


def data_section(data: dict) -> str:
    sizes = data["split_sizes"]
    rows = [["source", f"`{data['source']}`"],
            ["sha256 of the split files", f"`{data['sha256']}`"],
            ["licence", f"{data['license']} ({data['license_note']})"],
            ["language", data["language"] or "not recorded (kftune does not detect it)"],
            ["rows read, used", f"{_number(data['rows_read'])}, {_number(data['rows_used'])}"],
            ["split sizes", ", ".join(f"{name} {n}" for name, n in sizes.items()) or "not recorded"],
            ["token limit", _number(data["max_seq_length"])]]
    return ("## Data\n\n" + _table(["", ""], rows) + "\n\nThe sha256 is taken over preprocess's split data files "
            "(each file's name and sha256, one line each: train and validation, then test), so a run on the same "
            "examples, split the same way, gives the same digest.")


def evaluation_section(task, evaluation: dict | None, scores: dict) -> str:
    if evaluation is None:
        return ("## Evaluation\n\nThis model was not evaluated: the export was made without evaluate's result, so "
                "no test score, baseline comparison or gate verdict is known. Evaluate it (the pipeline's evaluate "
                "step) before relying on it.")
    baseline = evaluation["baseline"]
    intervals = evaluation.get("intervals", {})
    base_scores = evaluation["baselines"][baseline]
    rows = []
    for metric, value in scores.items():
        interval = intervals.get(metric, {})
        rows.append([metric, _number(value),
                     f"[{_number(interval['model_ci_low'])}, {_number(interval['model_ci_high'])}]"
                     if "model_ci_low" in interval else "—",
                     _number(base_scores.get(metric)), _number(evaluation["delta_vs_baseline"].get(metric)),
                     f"[{_number(interval['ci_low'])}, {_number(interval['ci_high'])}]" if "ci_low" in interval
                     else "—"])
    if intervals:
        how = (f"Intervals: {LEVEL_TEXT} paired bootstrap intervals over the test examples "
               f"({evaluation['resamples']} resamples; the model and the baseline scored on the same resamples).")
    else:
        how = "The task gives no bootstrap intervals."
    table = _table(["test score", "model", f"model, {LEVEL_TEXT} interval", f"baseline `{baseline}`",
                    "gain over baseline", f"gain, {LEVEL_TEXT} interval"], rows)
    others = [[name, *(_number(s.get(m)) for m in scores)] for name, s in evaluation["baselines"].items()]
    checks = "\n".join(f"- {'PASS' if ok else 'FAIL'}: {check}" for check, ok in evaluation["checks"].items())
    return (f"## Evaluation\n\nScored by kftune's evaluate step on the held-out test split: "
            f"{evaluation['test_size']} examples that training and model selection never saw. The primary score is "
            f"`{evaluation.get('primary_metric') or task.primary}`; a gain is positive where the model is better (for "
            f"an error, baseline minus model). {how}\n\n{table}\n\n### Baselines\n\n"
            + _table(["baseline", *scores], others)
            + f"\n\n### Gate: {gate_verdict(evaluation)}\n\n{checks or '- no checks'}")



def use_section(task, info: dict, data: dict, evaluation: dict | None) -> str:
    lines = [f"It predicts {task.summary}."]
    labels = info.get("labels") or []
    if labels:
        lines.append(f"Its labels: {', '.join(f'`{label}`' for label in labels[:LISTED_LABELS])}"
                     + (", ..." if len(labels) > LISTED_LABELS else "") + ".")
    if "target_mean" in info:
        lines.append(f"The target it was trained on had mean {info['target_mean']:.4g} and standard deviation "
                     f"{info.get('target_std', float('nan')):.4g} on the training split; answers are in its units.")
    if info.get("answers"):
        lines.append(f"It was trained to answer with one of: {', '.join(f'`{a}`' for a in info['answers'])}.")
    sizes = data["split_sizes"]
    language = data["language"] or "not recorded"
    lines.append(f"It was fine-tuned on `{data['source']}` ({sizes.get('train', '?')} training and "
                 f"{sizes.get('validation', '?')} validation examples; language: {language}), and is meant for text "
                 "like that data.")
    if evaluation:
        lines.append(f"The scores above are on the held-out test split of {evaluation['test_size']} examples drawn "
                     "from the same data: they say how it does on text like it, not elsewhere.")
    return "## Intended use\n\n" + " ".join(lines)


def limitations_section(base: dict, data: dict, evaluation: dict | None) -> str:
    items = []
    if evaluation is None:
        items.append("It was not evaluated: nothing is known of its quality.")
    elif not evaluation["passed"]:
        items.append("It **failed** the pipeline's gate (see Evaluation): it did not meet the release criteria the run "
                     "was given; do not deploy it as it is.")
    if evaluation and "intervals" in evaluation:
        items.append(f"Its scores come from {evaluation['test_size']} test examples: their {LEVEL_TEXT} intervals "
                     "show how much they could move on another sample of that size.")
    if data["max_seq_length"]:
        truncated = data["truncated_fraction"]
        items.append(f"Inputs are cut at {data['max_seq_length']} tokens, as in training"
                     + (f" ({truncated:.1%} of the data's examples reached that limit)." if truncated is not None
                        else "."))
    items.append(f"It inherits what `{base['name']}` learned before fine-tuning, its biases included, and knows of "
                 f"the task only what `{data['source']}` shows; text from another domain, time or language may be "
                 "scored worse than the test split suggests.")
    if UNKNOWN in (base["license"], data["license"]):
        items.append("The licence of the base model or of the data is unknown (see Licence): settle it before "
                     "distributing this model.")
    return "## Limitations\n\n" + "\n".join(f"- {item}" for item in items)


def how_to_use_section(task) -> str:
    text_fields = getattr(task, "text_fields", ("text",))  # an encoder task's inputs (a sentence pair has two)
    instance = '"Your text here."' if len(text_fields) == 1 else json.dumps({f: "..." for f in text_fields})
    if task.serving == "openai":
        request = ("curl -s localhost:8080/openai/v1/chat/completions -H 'Content-Type: application/json' \\\n"
                   "  -d '{\"model\": \"model\", \"messages\": [{\"role\": \"user\", \"content\": \"Your prompt.\"}]}'")
    else:
        request = f"curl -s localhost:8080/v1/models/model:predict -d '{{\"instances\": [{instance}]}}'"
    return ("## How to use\n\nServe this directory (a local copy, or the `s3://` / `gs://` URI it was published to) "
            "and send it a request:\n\n```bash\n"
            "kftune serve EXPORT_DIR --model-name model --http-port 8080\n"
            f"{request}\n```\n\nOr predict a file (CSV, JSON Lines, Parquet; one row per input row):\n\n```bash\n"
            "kftune predict EXPORT_DIR --predict-input texts.csv --predict-output predictions.jsonl\n```")


def training_section(history: dict) -> str:
    config = history.get("config")
    if not config:
        return "## Training\n\nThe trained model records no training settings (no `training_history.json`)."
    from kftune.training.config import TrainConfig

    internal = {f.name for f in fields(TrainConfig) if f.metadata.get("internal")}
    epochs = history.get("epochs") or []
    facts = (f"{len(epochs)} epoch(s) run, best epoch {history.get('best_epoch', 'not recorded')}, "
             f"{history.get('world_size', 1)} process(es).")
    rows = [[f"`{name}`", f"`{json.dumps(value)}`"] for name, value in config.items() if name not in internal]
    return (f"## Training\n\nThe settings the model was trained with, as training resolved them "
            f"(`training_history.json`): {facts}\n\n<details><summary>Training settings</summary>\n\n"
            + _table(["setting", "value"], rows) + "\n\n</details>")


def licence_section(base: dict, data: dict) -> str:
    return (f"## Licence\n\n- Base model: **{base['license']}** ({base['license_note']}).\n"
            f"- Data: **{data['license']}** ({data['license_note']}).\n\n"
            "The card's `license` is the base model's: the fine-tuned weights derive from it. kftune does not choose "
            "a licence for what it trains; the data's terms may apply too.")
