"""The tune pipeline: preprocess -> hyperparameter search -> train the best -> evaluate -> export.

The search runs one of three ways, chosen when the run starts (``search_backend``, ``algorithm``):

- ``pipeline`` + ``grid``/``random``: every trial is its own train task (``dsl.ParallelFor``,
  each with the training GPU request), collected with ``dsl.Collected`` to pick the best;
- ``pipeline`` + ``tpe``: one task runs an Optuna study (TPE, median pruning);
- ``katib``: a Katib ``Experiment`` on the cluster (grid, random, tpe, bayesianoptimization).

The final model trains with the best parameters on the training split, or on training and
validation (``final_train_on``), and is then evaluated and exported as in ``finetune``.
"""

from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Metrics, Model

from kftune.components.common.images import ImageScheme
from kftune.components.common.training.search_space import DEFAULT_SEARCH_SPACE
from kftune.components.evaluate import component as evaluate_component
from kftune.components.export import component as export_component
from kftune.components.preprocess import component as preprocess_component
from kftune.components.train import component as train_component
from kftune.components.tune import component as tune_component
from kftune.pipelines.finetune import SHARED_MOUNT, StorageAccess, TrainResources

PIPELINE_NAME = "tune"


def build_tune_pipeline(
    images: ImageScheme = ImageScheme(), resources: TrainResources = TrainResources(), trial_parallelism: int = 2,
    storage: StorageAccess = StorageAccess(),
):
    """The tune pipeline with its components in ``images``; trials and the final training on ``resources``.

    ``trial_parallelism`` caps the grid/random trials running at once (each holds ``resources``);
    KFP fixes it when compiling. Katib's ``parallel_trials`` is a run parameter.
    """
    resources.validate()
    preprocess_op = preprocess_component.component(images)
    train_op = train_component.component(images)
    evaluate_op = evaluate_component.component(images)
    export_op = export_component.component(images)
    tune_ops = tune_component.components(images)

    class Outputs(NamedTuple):
        model: Model
        onnx_model: Model
        evaluation: Metrics
        best_params: dict
        passed: bool

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Search hyperparameters (grid, random, Optuna TPE or Katib), then fine-tune with the best, "
        "evaluate against baselines and export to ONNX.",
    )
    def tune(
        data: str = "bundled:rotten-tomatoes",
        text_column: str = "text",
        label_column: str = "label",
        data_format: str = "auto",
        model: str = "bundled:all-MiniLM-L6-v2",
        max_seq_length: int = 128,
        max_rows: int = 0,
        validation_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 42,
        search_space: str = DEFAULT_SEARCH_SPACE,
        algorithm: str = "tpe",
        search_backend: str = "pipeline",
        max_trials: int = 4,
        parallel_trials: int = 2,
        metric: str = "f1_macro",
        direction: str = "maximize",
        include_defaults: bool = True,
        prune: bool = True,
        final_train_on: str = "train",
        learning_rate: float = 1e-4,
        num_train_epochs: int = 3,
        per_device_train_batch_size: int = 32,
        gradient_accumulation_steps: int = 1,
        warmup_ratio: float = 0.1,
        weight_decay: float = 0.01,
        group_by_length: bool = False,
        mixed_precision: str = "auto",
        early_stopping_patience: int = 2,
        training_mode: str = "full",
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.1,
        lora_target_modules: str = "",
        nproc_per_node: int = 0,
        max_steps: int = 0,
        gpus_per_trial: int = 1,
        min_accuracy: float = 0.8,
        min_f1_macro: float = 0.0,
        min_gain_over_baseline: float = 0.0,
        quantize_int8: bool = True,
    ) -> Outputs:
        """Search hyperparameters, then fine-tune, evaluate and export the best configuration.

        Args:
            data: Labelled text: a CSV/TSV/JSONL/Parquet file, a directory of shards or a datasets.save_to_disk directory, local or s3:// / gs:// (credentials from the environment), or bundled:rotten-tomatoes.
            text_column: Column holding the text.
            label_column: Column holding the label.
            data_format: auto (from the file name), csv, tsv, jsonl, parquet or hf-disk.
            model: Pretrained model: a Hugging Face model directory, local or at s3://bucket/prefix or gs://bucket/prefix, bundled:all-MiniLM-L6-v2, or a hub id.
            max_seq_length: Texts are tokenized up to this many tokens (a searched max_seq_length cuts further).
            max_rows: Use a stratified sample of this many cleaned rows (0 uses all).
            validation_fraction: Share of rows in the validation split (scores the trials).
            test_fraction: Share of rows in the test split (scores the final model only).
            seed: Seed of the split, the search and every training run.
            search_space: JSON: per option a range {"low", "high", "log", "step", "grid"} or a list of choices; options: learning_rate, num_train_epochs, per_device_train_batch_size, gradient_accumulation_steps, weight_decay, warmup_ratio, max_seq_length, layerwise_lr_decay, and lora_r, lora_alpha, lora_dropout with training_mode lora.
            algorithm: grid, random or tpe (Bayesian, Optuna); with search_backend katib also bayesianoptimization.
            search_backend: pipeline (trials as pipeline tasks, or one Optuna task) or katib (a Katib Experiment).
            max_trials: Trials in all (the default configuration counts when include_defaults).
            parallel_trials: Katib trials running at once (the grid/random fan-out's limit is set at compile time).
            metric: Validation metric the search optimises: f1_macro, accuracy or loss.
            direction: maximize or minimize the metric.
            include_defaults: Make the first trial the configuration given by the parameters below.
            prune: tpe: stop trials whose per-epoch validation score falls below the median of earlier trials.
            final_train_on: Train the final model on train, or on train+validation.
            learning_rate: Base learning rate (searched options replace base values).
            num_train_epochs: Base epochs.
            per_device_train_batch_size: Base batch size.
            gradient_accumulation_steps: Base gradient accumulation steps.
            warmup_ratio: Base warmup ratio.
            weight_decay: Base weight decay.
            group_by_length: Batch texts of similar length together: 1.5x faster on a CPU, off by default as it has not been shown to keep accuracy.
            mixed_precision: auto, bf16, fp16 or no.
            early_stopping_patience: Epochs without improvement before training stops (0 never).
            training_mode: full, freeze_encoder, lora or prompt_tuning.
            lora_r: Base LoRA rank.
            lora_alpha: Base LoRA alpha.
            lora_dropout: Base LoRA dropout.
            lora_target_modules: LoRA target modules (empty: peft's default for the model).
            nproc_per_node: Training processes per node: 0 = one per GPU (or 1 on CPU).
            max_steps: Cap on optimizer steps of every training run (0: none); for smoke runs.
            gpus_per_trial: GPUs each Katib trial pod requests (pipeline trials use the compiled train request).
            min_accuracy: Gate: minimum test accuracy.
            min_f1_macro: Gate: minimum test macro F1.
            min_gain_over_baseline: Gate: minimum test accuracy gain over the TF-IDF baseline.
            quantize_int8: Also export an int8 dynamically quantized ONNX model.
        """
        prep = preprocess_op(
            data=data, text_column=text_column, label_column=label_column, data_format=data_format,
            model=model, max_seq_length=max_seq_length, max_rows=max_rows,
            validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed,
        )
        prep.set_display_name("preprocess").set_cpu_request("1").set_memory_request("4G")
        storage.apply(prep)  # data and the pretrained model may come from s3:// or gs://

        plan = tune_ops["plan_search"](
            search_space=search_space, algorithm=algorithm, search_backend=search_backend, max_trials=max_trials,
            seed=seed, direction=direction, include_defaults=include_defaults, base_model=model,
            learning_rate=learning_rate, num_train_epochs=num_train_epochs,
            per_device_train_batch_size=per_device_train_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps, warmup_ratio=warmup_ratio,
            weight_decay=weight_decay, group_by_length=group_by_length, mixed_precision=mixed_precision,
            metric=metric, early_stopping_patience=early_stopping_patience, training_mode=training_mode,
            lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            lora_target_modules=lora_target_modules, nproc_per_node=nproc_per_node, max_steps=max_steps,
        )
        plan.set_display_name("plan search").set_caching_options(False)
        train_config = plan.outputs["train_config"]

        with dsl.If(search_backend == "katib", name="katib"):
            katib = tune_ops["katib_search"](
                dataset=prep.outputs["dataset"], train_config=train_config, search_space=search_space,
                algorithm=algorithm, max_trials=max_trials, parallel_trials=parallel_trials, seed=seed,
                direction=direction, image=images.image("tune"), shared_dir=SHARED_MOUNT,
                shared_pvc=resources.shared_pvc, gpus_per_trial=gpus_per_trial,
                trial_placement=resources.trainjob_placement(),
            )
            katib.set_display_name("Katib search")
            if resources.shared_pvc:
                kubernetes.mount_pvc(katib, pvc_name=resources.shared_pvc, mount_path=SHARED_MOUNT)
        with dsl.Elif(algorithm == "tpe", name="optuna"):
            study = tune_ops["optuna_search"](
                dataset=prep.outputs["dataset"], train_config=train_config, search_space=search_space,
                max_trials=max_trials, seed=seed, direction=direction, include_defaults=include_defaults,
                prune=prune,
            )
            study.set_display_name("Optuna TPE search")
            resources.apply(study)
            storage.apply(study)
        with dsl.Else(name="fan-out"):
            with dsl.ParallelFor(plan.outputs["trials"], parallelism=trial_parallelism, name="trials") as trial:
                trial_task = tune_ops["search_trial"](
                    dataset=prep.outputs["dataset"], train_config=train_config, trial=trial
                )
                trial_task.set_display_name("trial")
                resources.apply(trial_task)
                storage.apply(trial_task)
            picked = tune_ops["select_best"](
                results=dsl.Collected(trial_task.output), train_config=train_config, algorithm=algorithm,
                direction=direction,
            )
            picked.set_display_name("select best")
        best_params = dsl.OneOf(
            katib.outputs["best_params"], study.outputs["best_params"], picked.outputs["best_params"]
        )

        trained = train_op(
            dataset=prep.outputs["dataset"], base_model=model, learning_rate=learning_rate,
            num_train_epochs=num_train_epochs, per_device_train_batch_size=per_device_train_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps, warmup_ratio=warmup_ratio,
            weight_decay=weight_decay, seed=seed, group_by_length=group_by_length, mixed_precision=mixed_precision,
            metric_for_best_model=metric, early_stopping_patience=early_stopping_patience,
            training_mode=training_mode, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            lora_target_modules=lora_target_modules, nproc_per_node=nproc_per_node, max_steps=max_steps,
            shared_dir=SHARED_MOUNT if resources.shared_pvc else "", shared_pvc=resources.shared_pvc,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, trainjob_image=images.image("train"),
            trainjob_placement=resources.trainjob_placement(), hyperparameters=best_params,
            train_on=final_train_on,
        )
        trained.set_display_name("train best")
        resources.apply(trained)
        storage.apply(trained)

        scored = evaluate_op(
            dataset=prep.outputs["dataset"], model=trained.outputs["model"], min_accuracy=min_accuracy,
            min_f1_macro=min_f1_macro, min_gain_over_baseline=min_gain_over_baseline,
        )
        scored.set_display_name("evaluate").set_cpu_request("2").set_memory_request("8G")
        exported = export_op(
            dataset=prep.outputs["dataset"], model=trained.outputs["model"], quantize_int8=quantize_int8
        )
        exported.set_display_name("export").set_cpu_request("2").set_memory_request("8G")
        return Outputs(
            model=trained.outputs["model"], onnx_model=exported.outputs["onnx_model"],
            evaluation=scored.outputs["metrics"], best_params=best_params, passed=scored.outputs["Output"],
        )

    return tune


tune = build_tune_pipeline()
