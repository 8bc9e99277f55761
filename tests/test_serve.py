"""`kftune serve`: a real KServe model server in a subprocess, answering V1, V2 (HTTP) and gRPC.

The fine-tuned tiny model is exported to ONNX, served on free 127.0.0.1 ports and asked over
HTTP; its answers must equal what the evaluate step's prediction code (PyTorch,
``predict_logits`` over the preprocessed test split) gives for the same texts.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.object_servers import HOST, MotoS3
from tests.serving import MODEL_NAME, Server, tokenized_like_preprocess, v2_body

MAX_SEQ_LENGTH = 128  # preprocess's default, used by the `prepared` fixture


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained, prepared, prepared_test) -> Path:
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model

    out = tmp_path_factory.mktemp("serve") / "onnx"
    export_model(trained, prepared, prepared_test, out, ExportConfig(quantize_int8=False))
    return out


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    srv = Server(str(exported), tmp_path_factory.mktemp("serve-log") / "server.log").wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log.read_text()  # SIGTERM: a clean shutdown


def evaluate_predictions(model_dir: Path, split) -> tuple[list[str], np.ndarray]:
    """(labels, probabilities) as the evaluate step computes them: PyTorch over a tokenized split."""
    from kftune.inference.runners import predict_logits, softmax, torch_runner
    from kftune.models.encoder import load_encoder_model

    model = load_encoder_model(model_dir)
    probabilities = softmax(predict_logits(torch_runner(model), split, 64))
    return [model.config.id2label[int(i)] for i in probabilities.argmax(1)], probabilities


def test_v1_and_v2_answer_what_evaluate_predicts(server, prepared, prepared_test, trained):
    from kftune.data.schema import TEXT, load_splits, load_test_split

    _, label_map = load_splits(prepared)
    test, names = load_test_split(prepared_test), list(label_map.names)
    texts = list(test[TEXT])
    labels, probabilities = evaluate_predictions(trained, test)

    v1 = server.v1({"instances": texts})
    assert v1.status_code == 200, v1.text
    predictions = v1.json()["predictions"]
    assert [p["label"] for p in predictions] == labels
    assert [p["label_id"] for p in predictions] == [names.index(label) for label in labels]
    served = np.array([[p["probabilities"][n] for n in names] for p in predictions])
    np.testing.assert_allclose(served, probabilities, atol=1e-4)

    v2 = server.v2(v2_body(texts))
    assert v2.status_code == 200, v2.text
    body = v2.json()
    assert body["id"] == "req-1" and body["model_name"] == MODEL_NAME
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["data"] == labels
    assert outputs["label_id"]["datatype"] == "INT64"
    assert outputs["label_id"]["data"] == [p["label_id"] for p in predictions]
    assert outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["probabilities"]["shape"] == [len(texts), 2]
    np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (len(texts), 2)), probabilities, atol=1e-4)

    # One text per request, in {"text": ...} form: each padded alone, same answers.
    for i in (0, 7):
        single = server.v1({"instances": [{"text": texts[i]}]}).json()["predictions"][0]
        assert single["label"] == labels[i]
        np.testing.assert_allclose([single["probabilities"][n] for n in names], probabilities[i], atol=1e-4)


def test_raw_texts_are_cleaned_and_truncated_as_in_preprocess(server, trained, prepared):
    from kftune.data.schema import LABELS_FILE, LabelMap

    names = LabelMap.load(prepared / LABELS_FILE).names
    raw = [
        "  <p>A <b>sharp</b>,   funny script &amp; a cast that never   misses.</p>\n",
        " ".join(["an overlong review that keeps going and going"] * 40),  # far beyond 128 tokens
    ]
    labels, probabilities = evaluate_predictions(trained, tokenized_like_preprocess(raw, trained, MAX_SEQ_LENGTH))
    predictions = server.v1({"instances": raw}).json()["predictions"]
    assert [p["label"] for p in predictions] == labels
    np.testing.assert_allclose([[p["probabilities"][n] for n in names] for p in predictions], probabilities,
                               atol=1e-4)


def test_concurrent_requests_get_their_own_answers(server, prepared_test):
    from concurrent.futures import ThreadPoolExecutor

    from kftune.data.schema import TEXT, load_test_split

    texts = list(load_test_split(prepared_test)[TEXT])
    requests_ = [texts[i : i + size] for i, size in zip(range(0, 24, 3), [1, 3, 2, 3, 1, 3, 2, 3], strict=True)]
    alone = [server.v1({"instances": batch}).json()["predictions"] for batch in requests_]
    with ThreadPoolExecutor(len(requests_)) as pool:
        together = list(pool.map(lambda batch: server.v1({"instances": batch}), requests_ * 2))
    assert [r.status_code for r in together] == [200] * len(together)
    for response, expected in zip(together, alone * 2, strict=True):
        got = response.json()["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in expected]
        np.testing.assert_allclose([p["probabilities"]["positive"] for p in got],
                                   [p["probabilities"]["positive"] for p in expected], atol=1e-5)


def test_health_and_metadata(server):
    def get(path):
        return requests.get(server.url + path, timeout=10)

    assert get("/v2/health/live").json() == {"live": True}
    assert get("/v2/health/ready").json() == {"ready": True}
    assert get(f"/v2/models/{MODEL_NAME}/ready").json() == {"name": MODEL_NAME, "ready": True}
    assert get(f"/v1/models/{MODEL_NAME}").json() == {"name": MODEL_NAME, "ready": True}
    metadata = get(f"/v2/models/{MODEL_NAME}").json()
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {
        "label": [-1], "label_id": [-1], "probabilities": [-1, 2]}
    assert get("/v2/models/other/ready").status_code == 404


def _texts(n: int) -> dict:
    return {"instances": ["fine"] * n}


@pytest.mark.parametrize(
    "protocol, body, status, message",
    [
        ("v1", b'{"instances": ["unterminated', 400, "Unrecognized request format"),
        ("v1", {"texts": ["a"]}, 400, 'no "instances" (its keys: \'texts\')'),
        ("v1", {"inputs": []}, 400, "/v2/models/<name>/infer"),
        ("v1", ["a film"], 400, 'expected a JSON object {"instances"'),
        ("v1", {"instances": "a film"}, 400, '"instances" to be a list'),
        ("v1", {"instances": []}, 400, "no texts given"),
        ("v1", {"instances": ["ok", 3]}, 400, "instances[1]: expected a string"),
        ("v1", {"instances": [{"review": "ok"}]}, 400, 'instances[0]: expected a string or {"text"'),
        ("v1", {"instances": ["fine", " <br/> "]}, 400, "text 1 is empty"),
        ("v1", _texts(1025), 400, "1025 texts in one request; at most 1024"),
        ("v2", b'{"inputs": [', 422, "JSON decode error"),
        ("v2", {"instances": ["a"]}, 422, "inputs"),
        ("v2", {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, 400,
         "datatype FP32; expected BYTES"),
        ("v2", {"inputs": [{"name": "review", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, 400,
         "expected one input named \"text\""),
        ("v2", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]}, 400,
         "does not fit its shape [3]"),
        ("v2", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 2], "data": ["a", "b", "c", "d"]}]},
         400, "expected [n]"),
        ("v2", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0], "data": []}]}, 400, "no texts given"),
        ("v2", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", None]}]}, 400,
         '"text"[1]: expected a string, got null'),
        ("v2", {**v2_body(["a"]), "outputs": [{"name": "logits"}]}, 400, "Unexpected inference output 'logits'"),
        ("other", {"instances": ["a"]}, 404, "Model with name other does not exist"),
    ],
)
def test_malformed_requests_get_4xx_and_the_server_goes_on(server, protocol, body, status, message):
    url = {"v1": f"{server.url}/v1/models/{MODEL_NAME}:predict", "v2": f"{server.url}/v2/models/{MODEL_NAME}/infer",
           "other": f"{server.url}/v1/models/other:predict"}[protocol]
    if isinstance(body, bytes):
        response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    else:
        response = requests.post(url, json=body, timeout=30)
    assert response.status_code == status, response.text
    body = response.json()
    assert message in (body["error"] if status != 422 else str(body["detail"])), body  # 422: FastAPI's validation
    assert server.v1({"instances": ["still answering?"]}).status_code == 200
    assert server.proc.poll() is None


def test_grpc_open_inference(server):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    texts = ["a moving, beautifully acted film", "tedious and far too long"]
    expected = server.v1({"instances": texts}).json()["predictions"]

    async def ask(datatype: str, data):
        client = InferenceGRPCClient(f"{HOST}:{server.grpc_port}")
        try:
            tensor = InferInput("text", [len(data)], datatype)
            tensor.set_data_from_numpy(data, binary_data=False)
            return await client.infer(InferRequest(model_name=MODEL_NAME, infer_inputs=[tensor]))
        finally:
            await client.close()

    response = asyncio.run(ask("BYTES", np.array(texts, dtype=np.object_)))
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    assert [s.decode() for s in outputs["label"]] == [p["label"] for p in expected]
    np.testing.assert_allclose(outputs["probabilities"][:, 1], [p["probabilities"]["positive"] for p in expected],
                               atol=1e-6)

    import grpc

    with pytest.raises(grpc.RpcError) as err:
        asyncio.run(ask("FP32", np.array([1.0, 2.0], dtype=np.float32)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expected BYTES" in err.value.details()


def test_serves_from_s3(exported, server, tmp_path):
    """MODEL as an s3:// URI: downloaded from a real S3 server (moto) and served the same."""
    import boto3

    moto = MotoS3().start()
    try:
        env = {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
        s3.create_bucket(Bucket="models")
        for path in exported.iterdir():
            s3.upload_file(str(path), "models", f"sentiment/v1/{path.name}")
        remote = Server("s3://models/sentiment/v1", tmp_path / "server.log", "--no-grpc", env=env).wait_ready()
        try:
            texts = ["a moving, beautifully acted film", "tedious and far too long"]
            assert remote.v1({"instances": texts}).json() == server.v1({"instances": texts}).json()
        finally:
            assert remote.stop() == 0
    finally:
        moto.stop()


@pytest.mark.parametrize(
    "make_model, extra, message",
    [
        (lambda tmp, trained: str(tmp / "missing"), [], "missing: no such directory; expected an export directory"),
        (lambda tmp, trained: str(trained), [], "no model.onnx (this looks like a trained Hugging Face model"),
        (lambda tmp, trained: str(tmp), ["--http-port", "8081"], "http_port and grpc_port must differ"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, trained, capsys, make_model, extra, message):
    from kftune.cli.main import main

    assert main(["serve", make_model(tmp_path, trained), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("kftune: error:")]
    assert len(errors) == 1 and message in errors[0], err


def test_cli_without_kserve_says_what_to_install(tmp_path, monkeypatch, capsys):
    from kftune.cli.main import main

    monkeypatch.setitem(sys.modules, "kserve", None)  # import kserve -> ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "kftune.components.serve.serve", raising=False)
    assert main(["serve", str(tmp_path)]) == 2
    assert "pip install 'kftune[serve]'" in capsys.readouterr().err


@pytest.mark.slow
def test_real_bundled_model_served_as_evaluate_predicts(tmp_path, prepared, prepared_test):
    """all-MiniLM-L6-v2 with a fresh classification head: exported, served, compared with PyTorch."""
    import shutil

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.data.bundled import bundled_model_dir
    from kftune.data.schema import LABELS_FILE, TEXT, LabelMap, load_test_split

    labels = LabelMap.load(prepared / LABELS_FILE)
    model_dir = tmp_path / "model"
    model = AutoModelForSequenceClassification.from_pretrained(
        str(bundled_model_dir()), num_labels=len(labels), id2label=labels.id2label, label2id=labels.label2id)
    model.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(str(bundled_model_dir())).save_pretrained(model_dir)
    shutil.copy(prepared / LABELS_FILE, model_dir / LABELS_FILE)
    export_model(model_dir, prepared, prepared_test, tmp_path / "onnx", ExportConfig(quantize_int8=False))

    test = load_test_split(prepared_test)
    expected, probabilities = evaluate_predictions(model_dir, test)
    srv = Server(str(tmp_path / "onnx"), tmp_path / "server.log", "--no-grpc", threads=2).wait_ready()
    try:
        predictions = srv.v1({"instances": list(test[TEXT])}).json()["predictions"]
    finally:
        assert srv.stop() == 0
    assert [p["label"] for p in predictions] == expected
    np.testing.assert_allclose([[p["probabilities"][n] for n in labels.names] for p in predictions], probabilities,
                               atol=1e-4)


def test_max_seq_length_comes_from_the_export(exported, tmp_path):
    from kftune.components.serve.config import ServeConfig
    from kftune.components.serve.serve import TextModel
    from kftune.inference.exported import export_max_seq_length

    assert export_max_seq_length(exported) == MAX_SEQ_LENGTH
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    report = json.loads((copy / "export_report.json").read_text())
    (copy / "export_report.json").write_text(json.dumps(report | {"max_seq_length": 16}))
    model = TextModel("m", copy)
    assert model.load() and model.config.max_seq_length == 16
    # an explicit --max-seq-length wins; a report without the field falls back to 128
    explicit = TextModel("m", copy, ServeConfig(model_name="m", max_seq_length=32))
    assert explicit.load() and explicit.config.max_seq_length == 32
    del report["max_seq_length"]
    (copy / "export_report.json").write_text(json.dumps(report))
    assert export_max_seq_length(copy) == 128
