"""KFP component: fine-tune with torchrun, or across nodes as a Kubeflow Trainer TrainJob
(thin door over common/training and trainjob.py; its settings come from their dataclasses)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from kftune.cluster.images import ImageScheme
from kftune.cluster.resources import TrainResources
from kftune.settings.signatures import with_settings
from kftune.tracking.config import TrackingConfig
from kftune.training.config import Launch, TrainConfig


@with_settings(TrainConfig, Launch, TrainResources, TrackingConfig)
def train(
    dataset: Input[Dataset],
    finetuned_model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
    pretrained_model: Input[Model] = None,
    hyperparameters: dict = {},
    shared_dir: str = "",
    run_id: str = "local",
    trainjob_image: str = "",
    trainjob_runtime: str = "torch-distributed",
    namespace: str = "",
) -> str:
    """Fine-tune a pretrained transformer for sequence classification under torchrun.

    Args:
        dataset: Train and validation splits from preprocess (no test split: train cannot see it).
        finetuned_model: Output: the best checkpoint as a Hugging Face model directory (safetensors, tokenizer, label maps).
        metrics: Output: best epoch, validation scores, throughput.
        curves: Output: HTML training curves.
        pretrained_model: A model from the pretrain step; when it holds a model (config.json) it replaces the model setting as the starting point.
        hyperparameters: Values that replace the training settings, e.g. the best trial of a search ({"learning_rate": 5e-5}).
        shared_dir: Mount path of a volume that outlives the pod (checkpoints, TrainJob data); empty: none.
        run_id: Identifies the pipeline run; checkpoints go to shared_dir/checkpoints/run_id so retries resume.
        trainjob_image: Image of the TrainJob's workers (the train image).
        trainjob_runtime: Kubeflow Trainer runtime the TrainJob refers to.
        namespace: Namespace of the TrainJob (empty: this pod's namespace).

    Returns:
        The TrainJob's handle as JSON (name, namespace, uid, final status, duration) when
        num_nodes > 1, else "{}".
    """
    values = dict(locals())
    import json
    import logging
    from dataclasses import asdict
    from pathlib import Path

    from kftune.cluster.resources import TrainResources
    from kftune.components.train.report import curves_html, history_metrics
    from kftune.settings.fields import settings_from
    from kftune.tasks import resolve_task
    from kftune.tracking.config import TrackingConfig
    from kftune.tracking.stages import end_training_run, fail_training_run, start_training_run
    from kftune.training.config import Launch, TrainConfig
    from kftune.training.launch import launch_training, shared_checkpoint_dir
    from kftune.training.search_space import apply_hyperparameters

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resources = settings_from(TrainResources, values)
    resources.validate()  # a run parameter: checked on the values the run was started with
    launch = settings_from(Launch, values)
    config = settings_from(TrainConfig, values, checkpoint_dir=shared_checkpoint_dir(shared_dir, run_id))
    if hyperparameters:
        config = apply_hyperparameters(config, hyperparameters)
    base_model = config.model
    if pretrained_model is not None and (Path(pretrained_model.path) / "config.json").is_file():
        import dataclasses

        config = dataclasses.replace(config, model=pretrained_model.path)
        base_model = f"{base_model} (pretrained by the pretrain step)"
    handle = {}
    config = resolve_task(config, dataset.path)
    tracker = start_training_run(settings_from(TrackingConfig, values), asdict(config) | asdict(launch), dataset.path,
                                 finetuned_model.path, run_name=f"{config.task} {Path(base_model.split()[0]).name}",
                                 tags={"kfp.run_id": run_id, "task": config.task, "base_model": base_model})
    if launch.num_nodes > 1 and base_model != config.model:
        from kftune.errors import ConfigError

        raise ConfigError("a pretrained model from the pretrain step is not staged for a multi-node TrainJob yet: "
                          "set num_nodes 1 or pretrain false")
    try:
        if launch.num_nodes > 1:  # the TrainJob's workers record no curves into the run (see the README)
            from kftune.components.train.trainjob import launch_multinode

            result = launch_multinode(config, dataset.path, finetuned_model.path, launch, resources,
                                      image=trainjob_image, mount_path=shared_dir, namespace=namespace or None,
                                      runtime=trainjob_runtime)
            history, handle = result["history"], result["trainjob"]
            finetuned_model.metadata["trainjob"] = handle
        else:
            history = launch_training(config, dataset.path, finetuned_model.path, launch,
                                      env=tracker.env() if tracker else None)
    except BaseException as e:
        fail_training_run(tracker, e)
        raise
    for name, value in history_metrics(history).items():
        metrics.log_metric(name, value)
    Path(curves.path).write_text(curves_html(history), encoding="utf-8")
    end_training_run(tracker, finetuned_model.path, history, curves.path)
    if tracker is not None:
        finetuned_model.metadata["mlflow_run_id"] = tracker.run_id
    finetuned_model.metadata.update({"framework": "pytorch", "format": "huggingface", "base_model": base_model,
                                     "training_mode": config.training_mode, "best_epoch": history["best_epoch"]})
    return json.dumps(handle, sort_keys=True)


def component(images: ImageScheme = ImageScheme()):
    """The train component running in its image under ``images``."""
    return dsl.component(train, base_image=images.image("train"), install_kfp_package=False)
