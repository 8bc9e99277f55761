"""causal-lm: instruction tuning of a causal language model on prompt/completion or chat data.

Data: prompt/completion, alpaca or chat-message rows rendered with the model's chat template,
loss on the assistant's tokens only (:mod:`~kftune.tasks.causal_lm.data`). LoRA by default;
evaluated against the base model asked the same prompts zero-shot and few-shot, with solved
examples from the training split (:mod:`~kftune.tasks.causal_lm.evaluation`,
:mod:`~kftune.tasks.causal_lm.few_shot`); exported as a Hugging Face directory (merged weights
and the adapter); served with OpenAI-compatible completions and chat completions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from kftune.data.bundled import INSTRUCTION_DATA, LM_MODEL
from kftune.data.chat import PLAIN_TEMPLATE, normalise_answer
from kftune.tasks.base import Prepared, Task, interval_metrics, interval_rows
from kftune.tasks.causal_lm.data import (
    INSTRUCTION_COLUMNS,
    REFERENCE,
    RULES,
    Instructions,
    answer_set,
    clean_and_encode,
    conversations,
    detect_layout,
    read_instructions,
)
from kftune.tasks.causal_lm.few_shot import FEW_SHOT, ZERO_SHOT, BaseModelBaseline

SUMMARY_KEYS = ("exact_match", "answer_accuracy", "rouge_l", "perplexity", "loss")
"""The scores the results JSON shows, where the data has them (``answer_accuracy``: short-answer data)."""
TABLE_KEYS = ("answer_accuracy", "exact_match", "rouge_l", "perplexity")


class CausalLMTask(Task):
    """Instruction tuning of a causal LM (see the module docstring)."""

    training_modes = ("full", "lora", "qlora")
    shardings = ("ddp", "fsdp")
    detect_order = 20
    export_format = "huggingface"
    pipeline_tag = "text-generation"
    serving = "openai"
    intervals = True
    comparison_heading = "Fine-tuned vs base model (few-shot and zero-shot)"
    predict_chunk_batches = 1

    # --- preprocess -------------------------------------------------------------------
    def detect(self, frame, config):
        """Instruction columns and no label column."""
        columns = set(map(str, frame.columns))
        found = [c for c in INSTRUCTION_COLUMNS if c in columns]
        if config.label_column in columns or not found:
            return None
        return f"instruction column(s) {', '.join(found)} and no column {config.label_column!r}"

    def recognises_export(self, model_config):
        return any(str(name).endswith("ForCausalLM") for name in model_config.get("architectures") or ())

    def prepare(self, config, frame=None) -> Prepared:
        """Read, recognise, clean and encode the instruction data (with the model's tokenizer, whose chat template
        renders it: an overlong example is told by its tokens)."""
        from transformers import AutoTokenizer

        from kftune.data.bundled import resolve_model
        from kftune.data.chat import ensure_chat_template
        from kftune.errors import DataError

        frame, source = read_instructions(config, frame)
        layout = detect_layout(frame, config.instruction_format, source)
        chats = conversations(frame, layout, source)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model), use_fast=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        ensure_chat_template(tokenizer)
        rows, removed = clean_and_encode(chats, tokenizer, config.max_seq_length, config.overlong, source)
        if config.max_rows and config.max_rows < len(rows):
            rows = rows.sample(n=config.max_rows, random_state=config.seed).reset_index(drop=True)
        if len(rows) < 10:
            raise DataError(f"{source}: {len(rows)} examples after cleaning; a train/validation/test split needs at "
                            "least 10")
        stats = {"instruction_format": layout,
                 "chat_template": "model" if tokenizer.chat_template != PLAIN_TEMPLATE else "plain",
                 "prompt_truncated": removed["prompt_truncated"]}
        return Prepared(rows, source, len(frame), {k: v for k, v in removed.items() if k in RULES}, stats, tokenizer)

    def data_info(self, prepared, config):
        return {"answers": answer_set(prepared.frame[REFERENCE].tolist()), "max_seq_length": config.max_seq_length,
                "instruction_format": prepared.stats["instruction_format"]}

    def train_info(self, train, info):
        """The longest completion of the training split (the generation budget's default): a longer test
        completion must not lengthen what evaluate lets the models generate."""
        return {"completion_max_tokens": int(np.asarray(train["completion_length"]).max())}

    def strata(self, frame, info):
        """Short-answer data is split stratified by the (normalised) answer."""
        return frame[REFERENCE].map(normalise_answer) if info.get("answers") else None

    def encode(self, splits, info, tokenizer, config, prepared):
        import datasets

        return datasets.DatasetDict({name: datasets.Dataset.from_pandas(part.reset_index(drop=True),
                                                                         preserve_index=False)
                                     for name, part in splits.items()})

    def distribution(self, split, info):
        if not info.get("answers"):
            return {}
        return dict(sorted(Counter(normalise_answer(r) for r in split[REFERENCE]).items()))

    def stats_labels(self, info):
        return list(info.get("answers") or [])  # short-answer data: the answers are the classes the report shows

    def dataset_stats(self, dataset, info, config, prepared):
        completion = np.asarray(prepared.frame["completion_length"])
        return {"answers": info["answers"], "token_length": {
            "completion_p95": float(np.percentile(completion, 95)), "completion_max": int(completion.max()),
            "truncated_fraction": prepared.stats["prompt_truncated"] / max(1, len(prepared.frame))}}

    # --- training ---------------------------------------------------------------------
    def recipe(self):
        """What the training loop does for a causal LM (:class:`~kftune.training.causal_lm_recipe.CausalLMRecipe`)."""
        from kftune.training.causal_lm_recipe import CausalLMRecipe

        return CausalLMRecipe()

    # --- evaluation -------------------------------------------------------------------
    def evaluate(self, model_dir, dataset_dir, test_dir, config, champion_dir=None):
        from dataclasses import replace

        from kftune.tasks.causal_lm.evaluation import evaluate_causal_lm

        return evaluate_causal_lm(model_dir, dataset_dir, test_dir,
                                  replace(config, batch_size=min(config.batch_size, 16)), self, champion_dir)

    def example_statistics(self, truth, predicted, info):
        """Per test prompt (``truth``: the references; ``predicted``: a model's ``generations``, and its summed
        ``loss`` over each reference's tokens and their count, ``loss_tokens``): its exact match, answer accuracy
        (short-answer data), ROUGE-L, loss and reference tokens
        (:func:`~kftune.tasks.causal_lm.evaluation.prompt_statistics`)."""
        from kftune.tasks.causal_lm.evaluation import prompt_statistics

        return prompt_statistics(predicted["generations"], truth, info.get("answers") or [], predicted["loss"],
                                 predicted["loss_tokens"])

    def scores_from_sums(self, sums, info):
        """Exact match, answer accuracy and ROUGE-L (means over the prompts) and perplexity (the exponential of the
        summed loss over the summed reference tokens), every one with an interval
        (:func:`~kftune.tasks.causal_lm.evaluation.scores_from_sums`)."""
        from kftune.tasks.causal_lm.evaluation import scores_from_sums

        return scores_from_sums(sums)

    def result_metrics(self, result):
        return tuple(k for k in SUMMARY_KEYS if k in result["model"])

    def result_extras(self, result):
        extras = {"answers": result["answers"], "primary_metric": result["primary_metric"],
                  "base_model": result["base_model"]}
        if "few_shot" in result:
            extras["few_shot_examples"] = result["few_shot"]["examples"]
            extras["baseline_max_new_tokens"] = result["baseline_max_new_tokens"]
        return extras

    def flat_metrics(self, result):
        flat = {f"{who}_{k}": v for who, scores in (("model", result["model"]), *result["baselines"].items())
                for k, v in scores.items()}
        flat.update({f"delta_{k}": v for k, v in result["delta_vs_baseline"].items()})
        flat.update(interval_metrics(result))
        flat["passed"] = float(result["passed"])
        return flat

    def summary_table(self, result):
        """The fine-tuned model, each base-model baseline, the gain over the gate's baseline with its interval, and
        (where that is the few-shot one) the gain over the base model zero-shot."""
        keys = [k for k in TABLE_KEYS if k in result["model"]]
        rows = [("fine-tuned model", *(result["model"][k] for k in keys))]
        rows += [(f"baseline: {_baseline_label(name, result)}", *(scores.get(k) for k in keys))
                 for name, scores in result["baselines"].items()]
        rows.append((f"delta vs {_baseline_label(result['baseline'], result, short=True)}",
                     *(result["delta_vs_baseline"].get(k) for k in keys)))
        rows += interval_rows(result, keys)
        zero_shot = result["baselines"].get(ZERO_SHOT)
        if zero_shot and result["baseline"] != ZERO_SHOT:
            rows.append((f"delta vs {_baseline_label(ZERO_SHOT, result, short=True)}",
                         *(self.gain(k, result["model"][k], zero_shot[k]) for k in keys)))
        return keys, rows

    def report_intro(self, result):
        budget = (f"greedy generations of at most {result['max_new_tokens']} tokens (the base model: "
                  f"{result['baseline_max_new_tokens']})" if "baseline_max_new_tokens" in result else
                  f"greedy generations of at most {result['max_new_tokens']} tokens")
        few_shot = result.get("few_shot", {})
        shots = (f" The few-shot baseline asks each test prompt after {few_shot['examples']} solved examples of the "
                 f"training split (balanced over the allowed answers where the data has them; seed "
                 f"{few_shot['seed']}; {few_shot['mean_examples']:.2f} on average after fitting the context); it is "
                 "the gate's baseline." if few_shot.get("examples") else "")
        answers = (f" Allowed answers: {', '.join(result['answers'])}; answer_accuracy reads the first allowed "
                   "answer each generation names as a word, exact_match compares the whole generation."
                   if result["answers"] else "")
        return (f"<p>Test split: {result['test_size']} prompts; {budget}; base model {result['base_model']}."
                f"{shots}{answers}</p>")

    def report_figures(self, result):
        from kftune.reports import figure_html, new_figure

        shown = [k for k in TABLE_KEYS if k in result["model"] and k != "perplexity"]
        bars = [*((_baseline_label(n, result, short=True), s) for n, s in result["baselines"].items()),
                ("fine-tuned", result["model"])]
        width = 0.8 / len(bars)
        fig, ax = new_figure(6, 3)
        x = np.arange(len(shown))
        for i, (label, scores) in enumerate(bars):
            ax.bar(x + (i - (len(bars) - 1) / 2) * width, [scores[k] for k in shown], width, label=label)
        ax.set_xticks(x, shown)
        ax.set_ylim(0, 1)
        ax.legend()
        return [figure_html(fig)]

    def report_sections(self, result):
        import html

        from kftune.reports import table_html

        names = [n for n in result["baselines"] if all(n in s for s in result["samples"])]
        samples = [(s["prompt"], s["reference"], *(s[n] for n in names), s["fine_tuned"]) for s in result["samples"]]
        sections = ["<h2>Sample answers</h2>",
                    table_html(["prompt", "reference", *(_baseline_label(n, result, short=True) for n in names),
                                "fine-tuned"], samples)]
        first = result.get("few_shot", {}).get("first_prompt")
        if first:
            sections.append("<details><summary>The first test prompt as the few-shot baseline was asked it"
                            f"</summary><pre>{html.escape(first)}</pre></details>")
        return sections

    # --- export, serving, prediction --------------------------------------------------
    def open_export(self, model_dir: Path, *, int8: bool = False, max_new_tokens: int = 0, batch_size: int = 16,
                    threads: int = 0, **ignored):
        from kftune.errors import ConfigError
        from kftune.inference.exported import ExportedCausalLM

        if int8:
            raise ConfigError("int8 runs an ONNX export's model.int8.onnx; a causal-LM export has none")
        return ExportedCausalLM(model_dir, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                threads=threads).load()


TASK = CausalLMTask(
    "causal-lm",
    "instruction tuning of a causal language model on prompt/completion or chat data",
    defaults={
        "data": INSTRUCTION_DATA,
        "model": LM_MODEL,
        "max_seq_length": 256,
        "training_mode": "lora",
        "metric_for_best_model": "loss",
        "learning_rate": 1e-3,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "min_primary_score": 0.0,
    },
    search_space={
        "learning_rate": {"low": 3e-4, "high": 3e-3, "log": True},
        "lora_r": [8, 16],
        "warmup_ratio": {"low": 0.0, "high": 0.1},
    },
    metrics=("answer_accuracy", "exact_match", "rouge_l", "perplexity"),
    primary="answer_accuracy",
    lower_is_better=frozenset({"loss", "perplexity"}),
    best_metrics=("loss",),
    baseline=FEW_SHOT,
    settings={"preprocess": (Instructions,), "evaluate": (BaseModelBaseline,)},
)


def _baseline_label(name: str, result: dict, short: bool = False) -> str:
    """How the report names a baseline of ``result``."""
    shots = result.get("few_shot", {}).get("examples", 0)
    labels = {ZERO_SHOT: ("base model zero-shot", "base model (zero-shot, same prompts)"),
              FEW_SHOT: ("base model few-shot", f"base model ({shots}-shot, examples from the training split; "
                                                "the gate's baseline)"),
              "base_model": ("base model", "base model (zero-shot, same prompts)")}
    short_label, long_label = labels.get(name, (name, name))
    return short_label if short else long_label
