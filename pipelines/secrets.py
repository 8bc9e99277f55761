"""Storage credentials for pipeline tasks, from Kubernetes Secrets (used when a pipeline is defined).

Only a Secret's name and key names reach the compiled YAML; Kubernetes injects the values
when the pod starts, as environment variables or a mounted file that
``kftune.storage`` reads.

The Secret's name may be a plain string or a pipeline parameter (a string parameter of the
pipeline function, or a task's string output), so one compiled pipeline can run against
different Secrets: kfp-kubernetes resolves ``secret_name`` at run time (``secretNameParameter``
in the platform spec). Which keys map to which variables, the mount path, the endpoint and
the region stay fixed when the pipeline is compiled.

``optional=True`` lets the pod start where the Secret (or one of its keys) is missing; the task
then runs without those credentials. It is about a missing Secret, not a missing name: to run
a task without a Secret, do not call the helper for it (a parameter's run-time value cannot be
tested while the pipeline is being defined).
"""

from __future__ import annotations

from kfp import dsl, kubernetes
from kfp.dsl.pipeline_channel import PipelineParameterChannel

from kftune.errors import ConfigError
from kftune.storage.s3 import parse_endpoint

#: A Secret's name: fixed when compiling (str), or a string pipeline parameter / task output.
SecretName = str | PipelineParameterChannel


def _checked(secret_name: SecretName, helper: str) -> SecretName:
    """``secret_name`` if it can name a Secret; else an error naming the helper and the value."""
    if isinstance(secret_name, PipelineParameterChannel):
        if secret_name.channel_type != "String":
            raise ConfigError(f"{helper}: secret_name is the {secret_name.channel_type} parameter "
                              f"{secret_name.name!r}; a Secret's name must be a str parameter")
        return secret_name
    if not isinstance(secret_name, str) or not secret_name.strip():
        raise ConfigError(f"{helper}: secret_name must be a Secret's name or a str pipeline parameter, "
                          f"got {secret_name!r}")
    return secret_name


def use_s3_secret(task: dsl.PipelineTask, secret_name: SecretName = "mlpipeline-minio-artifact",
                  access_key_field: str = "accesskey", secret_key_field: str = "secretkey",
                  endpoint: str | None = None, region: str | None = None,
                  optional: bool = False) -> dsl.PipelineTask:
    """Give a pipeline task S3 credentials from a Kubernetes Secret (kfp-kubernetes ``use_secret_as_env``).

    The defaults fit Kubeflow's own MinIO Secret (``mlpipeline-minio-artifact`` with
    ``accesskey``/``secretkey``). ``secret_name`` may be a str pipeline parameter; the key fields
    are fixed at compile time. ``endpoint`` and ``region`` (not secrets) become
    ``AWS_ENDPOINT_URL`` / ``AWS_REGION``. ``optional``: the pod starts even where the Secret is
    missing (the task then runs without S3 credentials). Returns ``task``.
    """
    kubernetes.use_secret_as_env(
        task, secret_name=_checked(secret_name, "use_s3_secret"),
        secret_key_to_env={access_key_field: "AWS_ACCESS_KEY_ID", secret_key_field: "AWS_SECRET_ACCESS_KEY"},
        optional=optional,
    )
    if endpoint:
        parse_endpoint(endpoint, "endpoint")  # the same check the task would make, but at compile time
        task.set_env_variable("AWS_ENDPOINT_URL", endpoint)
    if region:
        task.set_env_variable("AWS_REGION", region)
    return task


def use_gcs_secret(task: dsl.PipelineTask, secret_name: SecretName, key_file: str = "key.json",
                   mount_path: str = "/var/secrets/google", optional: bool = False) -> dsl.PipelineTask:
    """Give a pipeline task a GCS service-account key from a Kubernetes Secret, mounted as a file.

    The Secret is mounted at ``mount_path`` (kfp-kubernetes ``use_secret_as_volume``) and
    ``GOOGLE_APPLICATION_CREDENTIALS`` points at its ``key_file``. ``secret_name`` may be a str
    pipeline parameter. (On GKE with Workload Identity no Secret is needed: bind the pod's
    service account instead.) Returns ``task``.
    """
    kubernetes.use_secret_as_volume(task, secret_name=_checked(secret_name, "use_gcs_secret"),
                                    mount_path=mount_path, optional=optional)
    task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{mount_path.rstrip('/')}/{key_file}")
    return task
