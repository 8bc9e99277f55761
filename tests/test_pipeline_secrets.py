"""pipelines/secrets.py: a storage Secret's name can be a run parameter; the key mappings stay compiled in.

No ``from __future__ import annotations`` here: KFP reads the pipeline function's parameter
types from its annotations, which must be real types.
"""

import pytest
import yaml
from kfp import compiler, dsl

from kftune.errors import ConfigError
from kftune.pipelines.secrets import use_gcs_secret, use_s3_secret

DEFAULT_S3_SECRET = "default-s3-secret-name"
DEFAULT_GCS_SECRET = "default-gcs-secret-name"


@dsl.component(base_image="python:3.11")
def echo(text: str) -> str:
    return text


def compile_spec(pipeline, tmp_path) -> tuple[dict, dict]:
    """The pipeline spec and the Kubernetes platform spec's executors of ``pipeline``, compiled."""
    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_secret_names_as_pipeline_parameters_reach_the_platform_spec_as_parameters(tmp_path):
    @dsl.pipeline(name="secret-names")
    def pipeline(s3_secret: str = DEFAULT_S3_SECRET, gcs_secret: str = DEFAULT_GCS_SECRET):
        task = echo(text="s3://bucket/data")
        use_s3_secret(task, s3_secret, endpoint="http://minio-service.kubeflow:9000", region="us-east-1",
                      optional=True)
        use_gcs_secret(task, gcs_secret)
        # Inside a condition the task sits in a sub-DAG: the parameter must be passed down to it.
        with dsl.If(task.output == "s3://bucket/data"):
            use_s3_secret(echo(text="gated"), s3_secret, access_key_field="id", secret_key_field="key")

    spec, executors = compile_spec(pipeline, tmp_path)
    top, gated = executors["exec-echo"], executors["exec-echo-2"]

    (env,) = top["secretAsEnv"]
    assert env["secretNameParameter"] == {"componentInputParameter": "s3_secret"}
    assert "secretName" not in env  # no name fixed at compile time
    assert env["keyToEnv"] == [{"secretKey": "accesskey", "envVar": "AWS_ACCESS_KEY_ID"},
                               {"secretKey": "secretkey", "envVar": "AWS_SECRET_ACCESS_KEY"}]
    assert env["optional"] is True
    (volume,) = top["secretAsVolume"]
    assert volume["secretNameParameter"] == {"componentInputParameter": "gcs_secret"}
    assert "secretName" not in volume
    assert volume["mountPath"] == "/var/secrets/google" and volume["optional"] is False

    (env,) = gated["secretAsEnv"]
    assert env["secretNameParameter"] == {"componentInputParameter": "pipelinechannel--s3_secret"}
    assert [m["secretKey"] for m in env["keyToEnv"]] == ["id", "key"]
    condition = spec["root"]["dag"]["tasks"]["condition-1"]
    assert condition["inputs"]["parameters"]["pipelinechannel--s3_secret"] == {"componentInputParameter": "s3_secret"}

    # The names live only in the run parameters' defaults, never in the platform spec.
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["s3_secret"]["defaultValue"] == DEFAULT_S3_SECRET
    assert parameters["gcs_secret"]["defaultValue"] == DEFAULT_GCS_SECRET
    assert DEFAULT_S3_SECRET not in str(executors) and DEFAULT_GCS_SECRET not in str(executors)

    # Endpoint, region and the key file stay compile-time settings of the task's container.
    env_vars = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"]["exec-echo"]["container"]["env"]}
    assert env_vars == {"AWS_ENDPOINT_URL": "http://minio-service.kubeflow:9000", "AWS_REGION": "us-east-1",
                        "GOOGLE_APPLICATION_CREDENTIALS": "/var/secrets/google/key.json"}


def test_a_plain_secret_name_is_compiled_in(tmp_path):
    @dsl.pipeline(name="secret-literal")
    def pipeline():
        use_s3_secret(echo(text="x"))

    _, executors = compile_spec(pipeline, tmp_path)
    (env,) = executors["exec-echo"]["secretAsEnv"]
    assert env["secretNameParameter"] == {"runtimeValue": {"constant": "mlpipeline-minio-artifact"}}
    assert env["secretName"] == "mlpipeline-minio-artifact"


def test_a_secret_name_must_be_a_nonempty_str_or_a_str_parameter():
    def blank():
        use_s3_secret(echo(text="x"), " ")

    def not_a_string(s3_secret: int = 3):
        use_gcs_secret(echo(text="x"), s3_secret)

    # A pipeline function runs when it is decorated: that is where the error surfaces.
    with pytest.raises(ConfigError, match="use_s3_secret: secret_name must be"):
        dsl.pipeline(name="secret-blank")(blank)
    with pytest.raises(ConfigError, match="use_gcs_secret: .*Integer parameter 's3_secret'"):
        dsl.pipeline(name="secret-int")(not_a_string)
