"""The tune pipeline: preprocess -> hyperparameter search -> train the best -> evaluate -> export.

The search runs one of three ways, chosen when the run starts (``search_backend``, ``algorithm``):

- ``pipeline`` + ``grid``/``random``: every trial is its own train task (``dsl.ParallelFor``,
  each with the training resources), collected with ``dsl.Collected`` to pick the best;
- ``pipeline`` + ``tpe``: one task runs an Optuna study (TPE, median pruning);
- ``katib``: a Katib ``Experiment`` on the cluster (grid, random, tpe, bayesianoptimization).

Trials train on the training split and are scored on validation (the search is given preprocess's
``dataset`` artifact, which holds no test split); the final model trains with the best parameters as
``train_on`` says (train, or train+validation), and is then evaluated and exported as in
``finetune``, the only steps given the ``test_split`` artifact. Like finetune's, the run parameters are the components'
settings plus the training resources and Secret names.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Model

from kftune.cluster.images import ImageScheme
from kftune.cluster.resources import SHARED_MOUNT, TrainResources
from kftune.components.evaluate import component as evaluate_component
from kftune.components.export import component as export_component
from kftune.components.preprocess import component as preprocess_component
from kftune.components.train import component as train_component
from kftune.components.tune import component as tune_component
from kftune.pipelines.cluster import Cluster, ClusterOptions, StorageSecrets
from kftune.pipelines.steps import FinetuneSteps
from kftune.settings.signatures import settings_task, with_settings
from kftune.tracking.tracker import ENV_PIPELINE

PIPELINE_NAME = "tune"
STAGES = (
    preprocess_component.preprocess,
    tune_component.plan_search,
    tune_component.optuna_search,
    train_component.train,
    evaluate_component.evaluate,
    export_component.export,
)
"""The components whose settings are the tune pipeline's run parameters."""


SETTINGS = tuple(dict.fromkeys(group for stage in STAGES for group in stage.settings_groups))
"""The settings groups of the pipeline's stages, in form order."""
LOCAL_SETTINGS = tuple(group for group in SETTINGS if group is not TrainResources)
"""What a local run takes: a pod's resources and placement mean nothing to kfp.local."""


def build_tune_pipeline(images: ImageScheme = ImageScheme(), resources: TrainResources | None = None,
                        secrets: StorageSecrets | None = None, options: ClusterOptions = ClusterOptions()):
    """The tune pipeline with its components in ``images``; ``resources`` and ``secrets`` give the
    defaults of those run parameters (trials and the final training run on ``resources``),
    ``options`` what is fixed when compiling (among it the grid/random fan-out's parallelism)."""
    cluster = Cluster(resources or TrainResources(), secrets or StorageSecrets(), options)
    steps = FinetuneSteps(images, cluster, PIPELINE_NAME)
    tune_ops = tune_component.components(images)

    class Outputs(NamedTuple):
        model: Model
        exported_model: Model
        evaluation: Metrics
        best_params: dict
        passed: bool

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Search hyperparameters (grid, random, Optuna TPE or Katib) on the task's validation metric, then "
        "fine-tune with the best, evaluate against baselines and export.",
    )
    @with_settings(*SETTINGS, cluster.resources, cluster.secrets, omit=cluster.omitted_settings())
    def tune() -> Outputs:
        """Search hyperparameters, then fine-tune, evaluate and export the best configuration.

        Args:
        """
        values = dict(locals())
        prep = steps.preprocess(values)
        dataset = prep.outputs["dataset"]  # train and validation: what the search sees (the test split never)

        plan = settings_task(tune_ops["plan_search"], values, dataset=dataset)
        plan.set_display_name("plan search").set_caching_options(False)
        cluster.use_tracking_secret(plan, values)
        plan.set_env_variable(ENV_PIPELINE, PIPELINE_NAME)
        train_config = plan.outputs["train_config"]

        with dsl.If(values["search_backend"] == "katib", name="katib"):
            katib = settings_task(tune_ops["katib_search"], values, dataset=dataset, train_config=train_config,
                                  image=images.image("tune"), shared_dir=SHARED_MOUNT)
            katib.set_display_name("Katib search")
            cluster.mount_shared_volume(katib, values)
        with dsl.Elif(values["algorithm"] == "tpe", name="optuna"):
            study = settings_task(tune_ops["optuna_search"], values, dataset=dataset, train_config=train_config)
            study.set_display_name("Optuna TPE search")
            cluster.request_training_resources(study, values)
            cluster.use_storage_secrets(study, values)
            cluster.use_tracking_secret(study, values)
            study.set_env_variable(ENV_PIPELINE, PIPELINE_NAME)
        with dsl.Else(name="fan-out"):
            trials = plan.outputs["trials"]
            with dsl.ParallelFor(trials, parallelism=cluster.options.trial_parallelism, name="trials") as trial:
                trial_task = settings_task(tune_ops["search_trial"], values, dataset=dataset,
                                           train_config=train_config, trial=trial)
                trial_task.set_display_name("trial")
                cluster.request_training_resources(trial_task, values)
                cluster.use_storage_secrets(trial_task, values)
                cluster.use_tracking_secret(trial_task, values)
                trial_task.set_env_variable(ENV_PIPELINE, PIPELINE_NAME)
            picked = settings_task(tune_ops["select_best"], values, results=dsl.Collected(trial_task.output),
                                   train_config=train_config)
            picked.set_display_name("select best")
            cluster.use_tracking_secret(picked, values)
            picked.set_env_variable(ENV_PIPELINE, PIPELINE_NAME)
        reported = tune_ops["report_search"](record=dsl.OneOf(katib.output, study.output, picked.output))
        reported.set_display_name("search report")
        best_params = reported.outputs["best_params"]

        trained, scored, exported = steps.train_evaluate_export(values, dataset, prep.outputs["test_split"],
                                                                display_name="train best", hyperparameters=best_params)
        return Outputs(model=trained.outputs["finetuned_model"], exported_model=exported.outputs["exported_model"],
                       evaluation=scored.outputs["metrics"], best_params=best_params, passed=scored.outputs["Output"])

    return tune


tune = build_tune_pipeline()
