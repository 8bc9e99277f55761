"""dpo: preference optimisation of a causal language model on prompt/chosen/rejected pairs (Direct Preference
Optimisation, Rafailov et al. 2023).

Data: rows with ``prompt``, ``chosen`` and ``rejected``, as strings (TRL's standard form) or as message lists
(TRL's conversational form), each side rendered with the model's chat template as the causal-lm task renders a
conversation (:mod:`~kftune.tasks.dpo.data`). Training (:mod:`~kftune.tasks.dpo.training`): the DPO loss
(``beta``, ``loss_type``: the :class:`~kftune.tasks.dpo.training.Preference` settings) on response-only sequence
log-probabilities, LoRA by default, the reference being the starting weights (the adapter disabled), whose
log-probabilities are computed once before the first step and cached. The starting model is the bundled one, or
any causal LM directory given as ``model`` (an SFT export of the causal-lm task: SFT, then DPO). Evaluation
(:mod:`~kftune.tasks.dpo.evaluation`): preference accuracy of the trained model against the starting model (the
gate's baseline), with the implicit reward's accuracy and margin. Export, serving and prediction are the causal-lm
task's: the merged model and the adapter, answered over OpenAI-compatible endpoints.

The bundled data (``bundled:rotten-tomatoes-preferences``) is derived from the causal-lm task's bundled instruction
data: each of its first 400 prompts ("Is the following movie review positive or negative? Answer with one word:
positive or negative. Review: ...") becomes a pair whose chosen response is the review's label and whose rejected
response is the other allowed answer. Those reviews are among the instruction data's, so an SFT export of the
bundled instruction data has seen some of them.
"""

from __future__ import annotations

from kftune.data.bundled import LM_MODEL, PREFERENCE_DATA
from kftune.tasks.base import Prepared, Task
from kftune.tasks.causal_lm import CausalLMTask
from kftune.tasks.dpo.data import COLUMNS, RULES, clean_and_encode, detect_form, pairs
from kftune.tasks.dpo.evaluation import STARTING_MODEL
from kftune.tasks.dpo.training import Preference

METRICS = ("preference_accuracy", "reward_accuracy", "reward_margin")


class DPOTask(CausalLMTask):
    """Preference optimisation of a causal LM (see the module docstring): the causal-lm task's model, export and
    serving, with preference data, the DPO objective and preference scores."""

    shardings = ("ddp",)  # the reference pass shares its pairs over the ranks; FSDP shards would need every rank
    detect_order = 10  # before causal-lm, whose prompt column preference data has too
    comparison_heading = "Preference-tuned vs starting model"
    predict_chunk_batches = 1

    def check_settings(self, config) -> None:
        """Nothing beyond the ranges: ``beta`` > 0 is checked with every setting."""

    # --- preprocess -------------------------------------------------------------------
    def detect(self, frame, config):
        """Columns prompt, chosen and rejected."""
        if all(c in set(map(str, frame.columns)) for c in COLUMNS):
            return "columns prompt, chosen and rejected"
        return None

    def recognises_export(self, model_config):
        return False  # every dpo export names its task; an unnamed causal LM is causal-lm's

    def prepare(self, config, frame=None) -> Prepared:
        """Read, recognise the form, clean and encode the pairs (with the model's tokenizer and chat template)."""
        from transformers import AutoTokenizer

        from kftune.data.bundled import resolve_model
        from kftune.data.chat import PLAIN_TEMPLATE, ensure_chat_template
        from kftune.data.files import read_frame
        from kftune.data.labelled import read_bundled_preferences
        from kftune.errors import DataError

        if config.data == PREFERENCE_DATA:
            frame, source = read_bundled_preferences(), config.data
        elif frame is not None:
            source = config.data
        else:
            frame, source = read_frame(config.data, config.data_format)
        form = detect_form(frame, source)
        rows = pairs(frame, form, source)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model), use_fast=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        ensure_chat_template(tokenizer)
        encoded, removed = clean_and_encode(rows, tokenizer, config.max_seq_length, source)
        if config.max_rows and config.max_rows < len(encoded):
            encoded = encoded.sample(n=config.max_rows, random_state=config.seed).reset_index(drop=True)
        if len(encoded) < 10:
            raise DataError(f"{source}: {len(encoded)} preference pairs after cleaning; a train/validation/test split "
                            "needs at least 10")
        stats = {"preference_form": form,
                 "chat_template": "model" if tokenizer.chat_template != PLAIN_TEMPLATE else "plain"}
        return Prepared(encoded, source, len(frame), removed, stats, tokenizer)

    def data_info(self, prepared, config):
        return {"max_seq_length": config.max_seq_length, "preference_form": prepared.stats["preference_form"]}

    def strata(self, frame, info):
        return None

    def distribution(self, split, info):
        return {}

    def stats_labels(self, info):
        return []

    def dataset_stats(self, dataset, info, config, prepared):
        import numpy as np

        completion = np.asarray(prepared.frame["completion_length"])
        return {"token_length": {"chosen_completion_p95": float(np.percentile(completion, 95)),
                                 "chosen_completion_max": int(completion.max())}}

    # --- training ---------------------------------------------------------------------
    def recipe(self):
        """What the training loop does for preference pairs (:class:`~kftune.tasks.dpo.training.DPORecipe`)."""
        from kftune.tasks.dpo.training import DPORecipe

        return DPORecipe()

    # --- evaluation -------------------------------------------------------------------
    def evaluate(self, model_dir, dataset_dir, test_dir, config, champion_dir=None):
        from kftune.tasks.dpo.evaluation import evaluate_preferences

        return evaluate_preferences(model_dir, dataset_dir, test_dir, config, self, champion_dir)

    def example_statistics(self, truth, predicted, info):
        """Per test pair (``predicted``: a model's ``logps`` and the starting model's ``reference``, pairs x 2, and
        ``beta``): whether it prefers the chosen side, whether the implicit reward does, and the reward margin
        (:func:`~kftune.tasks.dpo.evaluation.pair_statistics`)."""
        from kftune.tasks.dpo.evaluation import pair_statistics

        return pair_statistics(predicted["logps"], predicted["reference"], predicted["beta"])

    def scores_from_sums(self, sums, info):
        """Each score, a mean over the pairs (:func:`~kftune.tasks.dpo.evaluation.scores_from_sums`)."""
        from kftune.tasks.dpo.evaluation import scores_from_sums

        return scores_from_sums(sums)

    def result_metrics(self, result):
        return tuple(k for k in self.metrics if k in result["model"])

    def result_extras(self, result):
        return {"primary_metric": result["primary_metric"], "base_model": result["base_model"],
                "beta": result["beta"]}

    def summary_table(self, result):
        """The trained model, the starting model, the gain in preference accuracy and its interval."""
        keys, rows = Task.summary_table(self, result)
        label = f"baseline: {STARTING_MODEL}"
        rows = [(f"{label} ({result['base_model']})", *row[1:]) if row[0] == label else row for row in rows]
        return keys, [tuple("" if cell is None else cell for cell in row) for row in rows]  # no reward baseline

    def report_intro(self, result):
        return (f"<p>Test split: {result['test_size']} preference pairs, each side scored by its log-probability "
                f"summed over the response tokens. The starting model ({result['base_model']}) is the gate's "
                f"baseline and the reference of the implicit reward (beta {result['beta']}). preference_accuracy: "
                "pairs whose chosen side the model finds more probable (ties half); reward_accuracy and "
                "reward_margin: the implicit reward's, for the trained model only.</p>")

    def report_figures(self, result):
        return []

    def report_sections(self, result):
        from kftune.reports import table_html

        rows = [(s["prompt"], s["chosen"], s["rejected"], s["starting_model_prefers_chosen"],
                 s["trained_prefers_chosen"], f"{s['margin']:.4f}") for s in result["samples"]]
        return ["<h2>Sample pairs</h2>",
                table_html(["prompt", "chosen", "rejected", "starting model prefers chosen",
                            "trained prefers chosen", "reward margin"], rows)]


TASK = DPOTask(
    "dpo",
    "preference optimisation (DPO) of a causal language model on prompt/chosen/rejected pairs",
    defaults={
        "data": PREFERENCE_DATA,
        "model": LM_MODEL,
        "max_seq_length": 256,
        "training_mode": "lora",
        "metric_for_best_model": "loss",
        "learning_rate": 5e-4,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "min_primary_score": 0.0,
    },
    search_space={
        "learning_rate": {"low": 1e-4, "high": 2e-3, "log": True},
        "beta": {"low": 0.05, "high": 0.5, "log": True},
    },
    metrics=METRICS,
    primary="preference_accuracy",
    lower_is_better=frozenset({"loss"}),
    best_metrics=("loss", *METRICS),
    baseline=STARTING_MODEL,
    settings={"train": (Preference,)},
)

__all__ = ["RULES", "TASK"]
