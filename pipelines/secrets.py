"""Storage credentials for pipeline tasks, from Kubernetes Secrets (used when a pipeline is defined).

Only a Secret's name and key names reach the compiled YAML; Kubernetes injects the values
when the pod starts, as environment variables or a mounted file that
``kftune.components.common.storage`` reads.
"""

from __future__ import annotations

from kftune.components.common.storage.s3 import parse_endpoint


def use_s3_secret(task, secret_name: str = "mlpipeline-minio-artifact", access_key_field: str = "accesskey",
                  secret_key_field: str = "secretkey", endpoint: str | None = None, region: str | None = None,
                  optional: bool = False):
    """Give a pipeline task S3 credentials from a Kubernetes Secret (kfp-kubernetes ``use_secret_as_env``).

    The compiled YAML holds only the Secret's name and key names; the values are injected by
    Kubernetes when the pod starts. The defaults fit Kubeflow's own MinIO Secret
    (``mlpipeline-minio-artifact`` with ``accesskey``/``secretkey``). ``endpoint`` and ``region``
    (not secrets) become ``AWS_ENDPOINT_URL`` / ``AWS_REGION``. ``optional``: the pod starts
    even where the Secret is missing (the task then runs without S3 credentials).
    """
    from kfp import kubernetes

    kubernetes.use_secret_as_env(
        task, secret_name=secret_name,
        secret_key_to_env={access_key_field: "AWS_ACCESS_KEY_ID", secret_key_field: "AWS_SECRET_ACCESS_KEY"},
        optional=optional,
    )
    if endpoint:
        parse_endpoint(endpoint, "endpoint")
        task.set_env_variable("AWS_ENDPOINT_URL", endpoint)
    if region:
        task.set_env_variable("AWS_REGION", region)
    return task


def use_gcs_secret(task, secret_name: str, key_file: str = "key.json", mount_path: str = "/var/secrets/google",
                   optional: bool = False):
    """Give a pipeline task a GCS service-account key from a Kubernetes Secret, mounted as a file.

    (On GKE with Workload Identity no Secret is needed: bind the pod's service account instead.)
    """
    from kfp import kubernetes

    kubernetes.use_secret_as_volume(task, secret_name=secret_name, mount_path=mount_path, optional=optional)
    task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{mount_path.rstrip('/')}/{key_file}")
    return task
