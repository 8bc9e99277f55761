"""Serving latency: ONNX Runtime against PyTorch eager, and requests/s through ``kftune serve``, in one run.

The model is the bundled all-MiniLM-L6-v2 with a randomly initialised two-class head (latency
does not depend on the head's weights), or a fine-tuned model directory given with ``--model``;
it is exported with the export step (``export_model``: ONNX, parity check, int8 copy). Texts are
reviews from the bundled Rotten Tomatoes data, cleaned and tokenized as preprocess does (max 128
tokens).

1. Engines, in this process, on the same pre-tokenized batches (tokenization is the same for
   both and not timed): PyTorch eager fp32 (``torch.inference_mode``), ONNX Runtime fp32
   (``model.onnx``, the session options ``kftune serve`` uses) and ONNX Runtime int8
   (``model.int8.onnx``). Batch 1 (one review at a time) and batch 32 (32 reviews padded to
   the longest). Both engines get the same threads: each value of ``--threads`` (default: all
   cores, then 1) as intra-op threads (``torch.set_num_threads`` / ``intra_op_num_threads``),
   one inter-op thread. The engines take turns in five blocks of calls, so load from other
   processes falls on all of them alike. p50 / p95 per call; speedup = PyTorch p50 / ONNX
   Runtime p50.
2. Server: ``kftune serve`` in a subprocess (the first ``--threads`` value, one HTTP worker,
   no gRPC), ``--clients`` concurrent HTTP clients on this same machine sending one review per
   request for ``--seconds`` seconds, V1 then V2. Reported: requests/s and client-side p50 / p95.

    .venv/bin/python bench/serve_latency.py --out serve-latency.json
    .venv/bin/python bench/serve_latency.py --model kftune-runs/.../model   # a fine-tuned model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MAX_SEQ_LENGTH = 128
ROUNDS = 5  # blocks of calls per engine, taken in turns (see time_engines)


def _percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "calls": len(ms)}


def build_model(work: Path, model: str | None) -> tuple[Path, Path, Path, Path]:
    """(Hugging Face model dir, export dir, dataset dir, test split dir): the bundled model with a random head, or
    ``model``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.data.bundled import bundled_model_dir
    from kftune.data.schema import LABELS_FILE, LabelMap

    dataset, test_split = work / "dataset", work / "test_split"
    tokenizer_source = model or str(bundled_model_dir())
    # 2,000 reviews: the test split (200) is export's parity set, all of them the bench's texts.
    preprocess(PreprocessConfig(model=tokenizer_source, max_rows=2000, max_seq_length=MAX_SEQ_LENGTH), dataset,
               test_split)
    if model is None:
        labels = LabelMap.load(dataset / LABELS_FILE)
        torch.manual_seed(0)
        hf = AutoModelForSequenceClassification.from_pretrained(
            str(bundled_model_dir()), num_labels=len(labels), id2label=labels.id2label, label2id=labels.label2id)
        model_dir = work / "model"
        hf.save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(str(bundled_model_dir())).save_pretrained(model_dir)
        shutil.copy(dataset / LABELS_FILE, model_dir / LABELS_FILE)
    else:
        model_dir = Path(model)
    export_dir = work / "onnx"
    report = export_model(model_dir, dataset, test_split, export_dir, ExportConfig(quantize_int8=True))
    print(f"exported {model_dir} -> {export_dir}: parity max |logit diff| "
          f"{report['parity']['max_abs_logit_diff']:.1e}", flush=True)
    return model_dir, export_dir, dataset, test_split


def bench_texts(dataset: Path, test_split: Path) -> list[str]:
    """Every split's texts, as requests to time (nothing is scored on them)."""
    from kftune.data.schema import TEXT, TRAINING_SPLITS, load_splits, load_test_split

    splits, _ = load_splits(dataset)
    return [t for name in TRAINING_SPLITS for t in splits[name][TEXT]] + list(load_test_split(test_split)[TEXT])


def make_batches(tokenizer, texts: list[str], batch_size: int, count: int, seed: int = 0) -> list[dict]:
    """``count`` batches of ``batch_size`` random texts, each padded to its longest, as int64 arrays."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        chosen = [texts[i] for i in rng.choice(len(texts), batch_size, replace=False)]
        encoded = tokenizer(chosen, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="np")
        batches.append({k: v.astype(np.int64) for k, v in encoded.items()})
    return batches


def time_engines(engines: dict, batches: list[dict], warmup: int, rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Seconds per call of every engine on the same batches, the engines taking turns block by block.

    The batches are cut into ``rounds`` blocks; each block runs through every engine in turn,
    and the first ``warmup`` calls of each block are not counted. Turns spread load from
    other processes over all engines alike; blocks (rather than alternating call by call) keep
    one engine's idle thread pool, still spinning, from competing with the next engine's.
    """
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for block in np.array_split(np.arange(len(batches)), rounds):
        for name, run in engines.items():
            for j, k in enumerate(block):
                start = time.perf_counter()
                run(batches[k])
                took = time.perf_counter() - start
                if j >= warmup:
                    seconds[name].append(took)
    return seconds


def engine_results(model_dir: Path, export_dir: Path, texts: list[str], threads: int, calls: dict[int, int]) -> list:
    """p50/p95 per call of PyTorch and ONNX Runtime (fp32, int8), each with ``threads`` intra-op threads."""
    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer

    from kftune.inference.exported import session_options
    from kftune.inference.runners import onnx_runner, torch_runner
    from kftune.models.encoder import load_encoder_model

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    engines = {
        "PyTorch eager fp32": torch_runner(load_encoder_model(model_dir)),
        "ONNX Runtime fp32": onnx_runner(ort.InferenceSession(
            str(export_dir / "model.onnx"), session_options(threads), providers=["CPUExecutionProvider"])),
        "ONNX Runtime int8": onnx_runner(ort.InferenceSession(
            str(export_dir / "model.int8.onnx"), session_options(threads), providers=["CPUExecutionProvider"])),
    }
    rows = []
    for batch_size, count in calls.items():
        warmup = max(2, count // (10 * ROUNDS))  # per block
        batches = make_batches(tokenizer, texts, batch_size, count + ROUNDS * warmup)
        tokens = float(np.mean([b["input_ids"].shape[1] for b in batches]))
        for name, seconds in time_engines(engines, batches, warmup).items():
            rows.append({"engine": name, "threads": threads, "batch_size": batch_size,
                         "padded_length_mean": tokens, **_percentiles(seconds)})
    for row in rows:
        base = next(r for r in rows if r["engine"].startswith("PyTorch") and r["batch_size"] == row["batch_size"])
        row["speedup_vs_pytorch_p50"] = base["p50_ms"] / row["p50_ms"]
        print(f"  {row['engine']:20s} {threads} thread(s), batch {row['batch_size']:2d}: p50 {row['p50_ms']:7.2f} ms, "
              f"p95 {row['p95_ms']:7.2f} ms, {row['speedup_vs_pytorch_p50']:.2f}x PyTorch", flush=True)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_results(export_dir: Path, texts: list[str], threads: int, clients: int, seconds: float,
                   work: Path) -> list:
    import requests

    port = _free_port()
    log = work / "server.log"
    command = [sys.executable, "-m", "kftune", "serve", str(export_dir), "--model-name", "bench",
               "--http-port", str(port), "--no-grpc", "--threads", str(threads)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kftune serve did not become ready:\n{log.read_text()}")
            try:
                if requests.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        protocols = {
            "V1": (f"{url}/v1/models/bench:predict", lambda text: {"instances": [text]}),
            "V2": (f"{url}/v2/models/bench/infer",
                   lambda text: {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}),
        }
        rows = []
        for name, (endpoint, body) in protocols.items():
            rows.append({"protocol": name, "clients": clients, "texts_per_request": 1,
                         **_load(endpoint, body, texts, clients, seconds)})
            print(f"  server {name}: {rows[-1]['requests_per_s']:.1f} requests/s, p50 {rows[-1]['p50_ms']:.1f} ms, "
                  f"p95 {rows[-1]['p95_ms']:.1f} ms", flush=True)
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _load(endpoint: str, body, texts: list[str], clients: int, seconds: float) -> dict:
    """``clients`` threads posting one text per request until ``seconds`` have passed (after a warm-up)."""
    import requests

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_at = time.monotonic() + 2.0  # warm-up: requests before this are not counted
    stop_at = start_at + seconds

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while (now := time.monotonic()) < stop_at:
            began = time.perf_counter()
            response = session.post(endpoint, json=body(texts[i % len(texts)]), timeout=60)
            took = time.perf_counter() - began
            if response.status_code != 200:
                errors[k] += 1
            elif now >= start_at:
                latencies[k].append(took)
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [x for per in latencies for x in per]
    if sum(errors):
        raise RuntimeError(f"{sum(errors)} requests failed during the load test")
    return {"requests_per_s": len(done) / seconds, **_percentiles(done)}


def print_table(result: dict) -> None:
    print()
    print("| engine | threads | batch | p50 ms | p95 ms | speedup vs PyTorch (p50) |")
    print("|---|---|---|---|---|---|")
    for r in result["engines"]:
        print(f"| {r['engine']} | {r['threads']} | {r['batch_size']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
              f"{r['speedup_vs_pytorch_p50']:.2f}× |")
    print()
    print("| server (kftune serve) | clients | requests/s | p50 ms | p95 ms |")
    print("|---|---|---|---|---|")
    for r in result["server"]:
        print(f"| {r['protocol']}, 1 text per request, {result['threads'][0]} threads | {r['clients']} | "
              f"{r['requests_per_s']:.1f} | "
              f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="fine-tuned Hugging Face model directory (default: the bundled model, "
                        "random head)")
    parser.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1, 1],
                        help="intra-op threads of both engines, one measurement per value; the server gets the "
                        "first (default: all cores, then 1)")
    parser.add_argument("--calls-batch1", type=int, default=300, help="timed calls at batch 1 (default: 300)")
    parser.add_argument("--calls-batch32", type=int, default=40, help="timed calls at batch 32 (default: 40)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default: 4)")
    parser.add_argument("--seconds", type=float, default=15, help="load test length per protocol (default: 15)")
    parser.add_argument("--out", type=Path, default=Path("serve-latency.json"))
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import onnxruntime as ort
    import torch

    torch.set_num_interop_threads(1)  # once per process; ONNX Runtime sessions get inter_op_num_threads=1
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kftune-bench-serve-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        model_dir, export_dir, dataset, test_split = build_model(work, args.model)
        texts = bench_texts(dataset, test_split)
        print("engines (the same intra-op threads for each; one inter-op thread):", flush=True)
        engines = [row for threads in args.threads for row in engine_results(
            model_dir, export_dir, texts, threads, {1: args.calls_batch1, 32: args.calls_batch32})]
        print(f"server ({args.threads[0]} intra-op threads, {args.clients} clients, {args.seconds:.0f} s per "
              "protocol):", flush=True)
        server = server_results(export_dir, texts, args.threads[0], args.clients, args.seconds, work)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__},
        "model": args.model or "bundled all-MiniLM-L6-v2, random 2-class head",
        "texts": len(texts),
        "max_seq_length": MAX_SEQ_LENGTH,
        "threads": args.threads,
        "engines": engines,
        "server": server,
        "seconds": time.perf_counter() - started,
        # 1-minute load averages: above ~0 before the run, other processes shared the CPU.
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
    }
    print_table(result)
    print(f"\nload average (1 min) before / after: {load_before[0]:.2f} / {result['load_average_1min']['after']:.2f}")
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
