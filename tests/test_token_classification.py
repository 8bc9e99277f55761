"""Token classification (NER): reading, cleaning, splitting, encoding, metrics, baseline, decoding,
collation, and a few training steps of a tiny random BERT token classifier."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from kftune.errors import DataError
from kftune.tasks import TASKS
from kftune.tasks import token_classification as tc
from kftune.tasks.token_classification import data as tcd
from kftune.tasks.token_classification import entities as tce
from tests.intervals import check_intervals, check_the_gate_can_require_the_lower_bound
from tests.task_data import toy_sentences, write_conll

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

"""


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from kftune.data.bundled import bundled_model_dir

    return AutoTokenizer.from_pretrained(bundled_model_dir())


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def error_of(call) -> str:
    with pytest.raises(DataError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message, message
    return message


# --- reading --------------------------------------------------------------------------------


def test_conll_reads_last_column_skips_docstart_and_splits_on_blank_lines(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL, encoding="utf-8")
    frame, source = tcd.read_token_data(str(path))
    assert source == str(path)
    assert frame[tcd.TOKENS].tolist() == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert frame[tcd.TAGS].tolist() == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]]
    assert frame[tcd.WHERE].tolist() == ["sentence 1 (line 3)", "sentence 2 (line 8)"]
    assert frame[tcd.LINE].tolist() == [3, 8]


def test_txt_is_conll_and_two_column_files_read(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("Paris B-LOC\n\nis O\nnice O", encoding="utf-8")  # no trailing blank line
    frame, _ = tcd.read_token_data(str(path))
    assert frame[tcd.TOKENS].tolist() == [["Paris"], ["is", "nice"]]


def test_jsonl_with_named_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"words": ["Ada", "codes"], "ner": ["B-PER", "O"], "id": 1},
                                              {"words": ["Bob"], "ner": ["B-PER"], "id": 2}])
    frame, _ = tcd.read_token_data(str(path), tokens_column="words", tags_column="ner")
    assert frame[tcd.TOKENS].tolist() == [["Ada", "codes"], ["Bob"]]
    assert frame[tcd.TAGS].tolist() == [["B-PER", "O"], ["B-PER"]]
    assert frame[tcd.WHERE].tolist() == ["line 1", "line 2"]


def test_parquet_and_json_read_lists(tmp_path):
    rows = [{"tokens": ["Ada", "codes"], "tags": ["B-PER", "O"]}, {"tokens": ["in", "Rome"], "tags": ["O", "B-LOC"]}]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    for name in ("d.parquet", "d.json"):
        frame, _ = tcd.read_token_data(str(tmp_path / name))
        assert frame[tcd.TOKENS].tolist() == [["Ada", "codes"], ["in", "Rome"]], name
        assert all(isinstance(t, list) for t in frame[tcd.TAGS]), name  # not numpy arrays
        cleaned, _ = tcd.clean_token_data(frame, name)
        assert cleaned[tcd.TAGS].tolist() == [["B-PER", "O"], ["O", "B-LOC"]]


def test_directory_of_shards_names_each_file(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"tokens": ["x"], "tags": ["O"]}])
    write_jsonl(tmp_path / "b.jsonl", [{"tokens": ["y", "z"], "tags": ["O"]}])
    frame, source = tcd.read_token_data(str(tmp_path))
    assert frame[tcd.TOKENS].tolist() == [["x"], ["y", "z"]]
    message = error_of(lambda: tcd.clean_token_data(frame, source))
    assert message == f"{tmp_path}: b.jsonl: line 1: 2 tokens but 1 tags; expected one tag per token"


# --- bad input: one line naming file, row and what was expected ------------------------------


def test_length_mismatch_names_file_line_and_both_lengths(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"tokens": ["a"], "tags": ["O"]},
                                              {"tokens": ["a", "b", "c"], "tags": ["O", "O"]}])
    frame, source = tcd.read_token_data(str(path))
    message = error_of(lambda: tcd.clean_token_data(frame, source))
    assert message == f"{path}: line 2: 3 tokens but 2 tags; expected one tag per token"


def test_unknown_tag_names_sentence_token_and_line(tmp_path):
    path = tmp_path / "d.conll"
    path.write_text("a O\n\nJohn PER\nsmiles O\n", encoding="utf-8")
    frame, source = tcd.read_token_data(str(path))
    message = error_of(lambda: tcd.clean_token_data(frame, source))
    assert message.startswith(f"{path}: sentence 2 (line 3), token 0 (line 3) ('John'): tag 'PER' is not IOB2; "
                              "expected O, B-TYPE or I-TYPE")


@pytest.mark.parametrize(("content", "expected"), [
    ("a O\nlonely\n", "line 2: expected a token and its tag"),
    ("a O\n", None),
])
def test_conll_line_without_tag(tmp_path, content, expected):
    path = tmp_path / "d.iob"
    path.write_text(content, encoding="utf-8")
    if expected is None:
        assert len(tcd.read_token_data(str(path))[0]) == 1
    else:
        assert error_of(lambda: tcd.read_token_data(str(path))).startswith(f"{path}: {expected}")


def test_other_bad_input_errors(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"tokens": ["a"], "tags": ["O"]}\n{"tokens": [\n', encoding="utf-8")
    assert error_of(lambda: tcd.read_token_data(str(bad_json))).startswith(f"{bad_json}: line 2: invalid JSON")

    columns = write_jsonl(tmp_path / "c.jsonl", [{"text": "a", "label": "O"}])
    assert error_of(lambda: tcd.read_token_data(str(columns))) == (
        f"{columns}: no column 'tokens'; the columns are: label, text (set tokens_column / tags_column)")

    string = write_jsonl(tmp_path / "s.jsonl", [{"tokens": "John smiles", "tags": ["B-PER", "O"]}])
    frame, source = tcd.read_token_data(str(string))
    assert error_of(lambda: tcd.clean_token_data(frame, source)) == (
        f"{string}: line 1: tokens must be a list of strings, got a string")

    blank = write_jsonl(tmp_path / "b.jsonl", [{"tokens": ["John", " "], "tags": ["B-PER", "O"]}])
    frame, source = tcd.read_token_data(str(blank))
    assert error_of(lambda: tcd.clean_token_data(frame, source)).startswith(f"{blank}: line 1, token 1: empty token")

    unknown = tmp_path / "d.csv"
    unknown.write_text("x", encoding="utf-8")
    assert "unknown token-classification data format '.csv'" in error_of(lambda: tcd.read_token_data(str(unknown)))
    assert error_of(lambda: tcd.read_token_data(str(tmp_path / "missing.conll"))).endswith("no such file or directory")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert error_of(lambda: tcd.read_token_data(str(empty))).startswith(f"{empty}: no rows; expected one object")
    assert error_of(lambda: tcd.split_token_data(pd.DataFrame({tcd.TOKENS: [["a"]], tcd.TAGS: [["O"]]}), 0.1, 0.1, 0,
                                                "d.conll")) == (
        "d.conll: 1 sentence(s) after cleaning; a train/validation/test split needs at least 3")


def test_bioes_tag_with_no_known_prefix_is_an_error(tmp_path):
    frame = pd.DataFrame({tcd.TOKENS: [["a", "b"]], tcd.TAGS: [["O", "X-PER"]]})
    assert error_of(lambda: tcd.clean_token_data(frame, "f.jsonl")).startswith(
        "f.jsonl: row 1, token 1 ('b'): tag 'X-PER' is not IOB2")


# --- cleaning and conversions --------------------------------------------------------------


def test_iob1_bioes_conversions_and_drops_are_counted():
    frame = pd.DataFrame({
        tcd.TOKENS: [["John", "Smith", "and", "Mary"], ["New", "York", "City"], ["Paris"], [],
                    ["John", "Smith", "and", "Mary"], ["x"]],
        tcd.TAGS: [["I-PER", "I-PER", "O", "I-PER"],  # IOB1: 2 entity starts written I-
                  ["B-LOC", "I-LOC", "E-LOC"],      # BIOES: E- -> I-
                  ["S-LOC"],                          # BIOES: S- -> B-
                  [],
                  ["B-PER", "I-PER", "O", "B-PER"],  # same as row 1 once converted
                  ["O"]],
    })
    cleaned, counts = tcd.clean_token_data(frame, "f")
    assert counts == {"empty": 1, "exact_duplicate": 1, "iob1_to_iob2": 2, "bioes_to_iob2": 2}
    assert cleaned[tcd.TAGS].tolist() == [["B-PER", "I-PER", "O", "B-PER"], ["B-LOC", "I-LOC", "I-LOC"], ["B-LOC"],
                                         ["O"]]
    assert list(cleaned.columns) == [tcd.TOKENS, tcd.TAGS]


def test_strict_iob2_refuses_iob1_and_bioes():
    iob1 = pd.DataFrame({tcd.TOKENS: [["a", "Mary"]], tcd.TAGS: [["O", "I-PER"]]})
    assert error_of(lambda: tcd.clean_token_data(iob1, "f", strict_iob2=True)) == (
        "f: row 1, token 1 ('Mary'): tag 'I-PER' starts an entity; expected B- at an entity's start (IOB2) "
        "with strict IOB2 checking")
    bioes = pd.DataFrame({tcd.TOKENS: [["Mary"]], tcd.TAGS: [["S-PER"]]})
    assert "is BIOES/BILOU" in error_of(lambda: tcd.clean_token_data(bioes, "f", strict_iob2=True))


def test_tag_list_order():
    assert tcd.tag_list([["B-PER", "O"], ["B-LOC", "I-LOC"], ["I-MISC"]]) == [
        "O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER"]


# --- split -----------------------------------------------------------------------------------


def test_stratify_keys_merge_rare_sets():
    tags = [["B-PER"]] * 4 + [["B-LOC", "O", "B-PER"]] * 3 + [["O"]] * 3 + [["B-ORG"]] * 2 + [["B-MISC"]]
    keys = tcd.stratify_keys(tags)
    assert keys[:10] == ["PER"] * 4 + ["LOC+PER"] * 3 + ["O"] * 3
    assert keys[10:] == [tcd.RARE] * 3  # ORG (2) and MISC (1) together make 3
    assert tcd.stratify_keys([["B-PER"]] * 3 + [["B-ORG"]]) == ["PER"] * 4  # a lone rare key joins the most common


def test_split_is_seeded_and_stratified():
    tags = [["B-PER", "O"]] * 40 + [["O", "O"]] * 40 + [["B-LOC", "I-LOC"]] * 20
    frame = pd.DataFrame({tcd.TOKENS: [[f"w{i}", "x"] for i in range(100)], tcd.TAGS: tags})
    a = tcd.split_token_data(frame, 0.1, 0.2, seed=3)
    b = tcd.split_token_data(frame, 0.1, 0.2, seed=3)
    assert [len(a[s]) for s in ("train", "validation", "test")] == [70, 10, 20]
    assert a["test"][tcd.TOKENS].tolist() == b["test"][tcd.TOKENS].tolist()
    test_keys = pd.Series(tcd.stratify_keys(a["test"][tcd.TAGS], min_count=1)).value_counts().to_dict()
    assert test_keys == {"PER": 8, "O": 8, "LOC": 4}  # the 40/40/20 proportions


# --- encoding and collation -----------------------------------------------------------------


def test_labels_on_first_word_piece_only(tokenizer):
    tag2id = {t: i for i, t in enumerate(["O", "B-ORG", "I-ORG", "B-PER", "I-PER"])}
    words = ["Kubeflow", "hired", "Ada", "Lovelace"]
    pieces = [tokenizer.tokenize(w) for w in words]
    assert len(pieces[0]) > 1 and len(pieces[3]) > 1, pieces  # the example needs split words
    encoded = tcd.encode(tokenizer, [words], [["B-ORG", "O", "B-PER", "I-PER"]], tag2id, max_length=64)
    labels, word_ids = encoded["labels"][0], encoded["word_ids"][0]
    expected_word_ids = [-1] + [w for w, p in enumerate(pieces) for _ in p] + [-1]
    assert word_ids == expected_word_ids
    expected = [-100]
    for tag, p in zip(["B-ORG", "O", "B-PER", "I-PER"], pieces, strict=True):
        expected += [tag2id[tag]] + [-100] * (len(p) - 1)
    assert labels == expected + [-100]
    assert len(encoded["input_ids"][0]) == len(labels) == len(encoded["attention_mask"][0])


def test_truncation_and_prediction_encoding(tokenizer):
    tag2id = {"O": 0}
    encoded = tcd.encode(tokenizer, [["a"] * 20], [["O"] * 20], tag2id, max_length=8)
    assert len(encoded["input_ids"][0]) == 8 and encoded["word_ids"][0] == [-1, 0, 1, 2, 3, 4, 5, -1]
    assert "labels" not in tcd.encode(tokenizer, [["a"]], None, None, max_length=8)
    assert "'B-X' is not in the label list" in error_of(
        lambda: tcd.encode(tokenizer, [["a"]], [["B-X"]], tag2id, max_length=8))


def test_collate_pads_labels_with_ignore_index():
    batch = tcd.collate([{"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "labels": [-100, 2, -100],
                         "word_ids": [-1, 0, -1]},
                        {"input_ids": [101, 102], "attention_mask": [1, 1], "labels": [-100, -100],
                         "word_ids": [-1, -1]}], pad_token_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 2, -100], [-100, -100, -100]]


# --- metrics and baseline --------------------------------------------------------------------


def test_scores_by_hand():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O", "B-PER"]]
    # true entities: PER, LOC, ORG(2 words), PER; predicted: PER (right), ORG (wrong type),
    # ORG (1 word: wrong boundary), PER (right) -> 2 of 4 right either way
    s = tce.scores(true, pred)
    assert (s["precision"], s["recall"], s["f1"]) == (0.5, 0.5, 0.5)
    assert s["accuracy"] == 6 / 8  # wrong: LOC->ORG and I-ORG->O
    assert s["per_class"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert s["per_class"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s["per_class"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s["confusion_labels"] == ["O", "LOC", "ORG", "PER"]
    assert s["confusion_matrix"] == [[2, 0, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 3]]
    json.dumps(s)  # plain types


def test_scores_are_strict_iob2():
    # conlleval's lenient reading would count the I-PER I-PER entity; strict IOB2 does not
    s = tce.scores([["B-PER", "I-PER"]], [["I-PER", "I-PER"]])
    assert s["f1"] == 0.0 and s["accuracy"] == 0.5


def test_most_frequent_tag_baseline():
    train_tokens = [["New", "York", "is", "big"], ["York", "is", "old"], ["Apple", "is", "new"], ["Apple", "pie"]]
    train_tags = [["B-LOC", "I-LOC", "O", "O"], ["B-LOC", "O", "O"], ["B-ORG", "O", "O"], ["O", "O"]]
    # York: I-LOC once, B-LOC once -> tie to the alphabetically first, B-LOC; Apple: B-ORG once, O once -> B-ORG
    predicted = tce.most_frequent_tag_baseline(train_tokens, train_tags,
                                              [["New", "York", "rocks"], ["Apple", "is", "unseen"]])
    assert predicted == [["B-LOC", "B-LOC", "O"], ["B-ORG", "O", "O"]]
    # a word mostly tagged I-X after O starts an entity (valid IOB2)
    assert tce.most_frequent_tag_baseline([["a", "Smith"]] * 2, [["B-PER", "I-PER"]] * 2, [["the", "Smith"]]) == [
        ["O", "B-PER"]]


def test_tags_from_labels_reads_first_pieces():
    id2tag = ["O", "B-PER", "I-PER"]
    labels = [[-100, 1, -100, 2, -100], [-100, 0, -100, -100, -100]]
    logits = [[[9, 0, 0], [0, 0, 3], [0, 5, 0], [0, 0, 1], [0, 0, 0]],  # I-PER I-PER -> repaired B-PER I-PER
              [[0, 0, 0], [0, 4, 0], [9, 0, 0], [9, 0, 0], [9, 0, 0]]]
    true, pred = tce.tags_from_labels(logits, labels, id2tag)
    assert true == [["B-PER", "I-PER"], ["O"]]
    assert pred == [["B-PER", "I-PER"], ["B-PER"]]


def test_repair_iob2():
    assert tcd.repair_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-PER"]) == (
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-PER"], 3)


# --- decoding --------------------------------------------------------------------------------


def test_word_predictions_take_first_piece():
    import math

    id2tag = ["O", "B-PER", "I-PER"]
    logits = [[9, 0, 0],   # [CLS]
              [0, 2, 0],   # word 0 first piece -> B-PER
              [5, 0, 0],   # word 0 second piece (ignored)
              [0, 0, 1],   # word 1 -> I-PER
              [9, 0, 0]]   # [SEP]
    tags, word_scores = tce.word_predictions(logits, [None, 0, 0, 1, None], id2tag, num_words=3)
    assert tags == ["B-PER", "I-PER", "O"]  # word 2 was truncated away
    assert word_scores[0] == pytest.approx(math.exp(2) / (math.exp(2) + 2))
    assert word_scores[1] == pytest.approx(math.e / (math.e + 2))
    assert word_scores[2] == 0.0


def test_entity_spans_have_offsets_into_the_original_text(tokenizer):
    text = "Zoë  Saldaña visited São Paulo, then Kubeflow-Land."
    words = tce.text_words(tokenizer, text)
    assert [w for w, _, _ in words] == ["Zoë", "Saldaña", "visited", "São", "Paulo", ",", "then", "Kubeflow", "-",
                                        "Land", "."]
    assert all(text[s:e] == w for w, s, e in words)
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O", "I-ORG", "I-ORG", "I-ORG", "O"]
    word_scores = [0.9, 0.7, 0.99, 0.6, 0.8, 0.9, 0.9, 0.5, 0.4, 0.3, 0.9]
    spans = tce.entity_spans(text, words, tags, word_scores)
    assert [(s["entity_group"], s["word"], s["start"], s["end"]) for s in spans] == [
        ("PER", "Zoë  Saldaña", 0, 12), ("LOC", "São Paulo", 21, 30), ("ORG", "Kubeflow-Land", 37, 50)]
    assert [s["score"] for s in spans] == pytest.approx([0.8, 0.7, 0.4])
    assert all(text[s["start"]:s["end"]] == s["word"] for s in spans)
    # a type change without B- starts a new entity
    assert [s["entity_group"] for s in tce.entity_spans("a b", [(0, 1), (2, 3)], ["I-PER", "I-LOC"], [1, 1])] == [
        "PER", "LOC"]


def tiny_token_model(num_labels: int):
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from kftune.data.bundled import bundled_model_dir

    config = BertConfig.from_pretrained(bundled_model_dir())
    config.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=128, num_labels=num_labels))
    torch.manual_seed(0)
    return BertForTokenClassification(config)


def test_predict_entities_on_raw_text(tokenizer):
    from kftune.inference.runners import torch_runner

    model = tiny_token_model(5).eval()
    texts = ["Ada Smith lives in Paris.", "", "Grace met   Linus in Oslo today"]
    id2tag = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    results = tce.predict_entities(torch_runner(model), tokenizer, texts, id2tag, max_length=32)
    assert len(results) == 3 and results[1] == []
    for text, spans in zip(texts, results, strict=True):
        for span in spans:
            assert set(span) == {"entity_group", "score", "word", "start", "end"}
            assert text[span["start"]:span["end"]] == span["word"] and 0 < span["score"] <= 1


def test_a_tiny_token_classifier_learns(tokenizer):
    """A few optimiser steps on encoded toy data with the collator: the loss goes down."""
    import torch

    tokens, tags = toy_sentences(64)
    names = tcd.tag_list(tags)
    tag2id = {t: i for i, t in enumerate(names)}
    encoded = tcd.encode(tokenizer, tokens, tags, tag2id, max_length=32)
    examples = [{k: encoded[k][i] for k in ("input_ids", "attention_mask", "labels")} for i in range(len(tokens))]
    model = tiny_token_model(len(names))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        for start in range(0, len(examples), 16):
            batch = tcd.collate(examples[start:start + 16], tokenizer.pad_token_id)
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4, losses
    model.eval()
    with torch.no_grad():
        logits = model(**tcd.collate(examples[:8], tokenizer.pad_token_id)).logits.numpy()
    predicted = [tcd.repair_iob2(tce.word_predictions(row, encoded["word_ids"][i], names,
                                                    num_words=len(tokens[i]))[0])[0]
                 for i, row in enumerate(logits)]
    assert tce.scores(tags[:8], predicted)["accuracy"] > 0.6


def test_onnx_export_of_a_token_classifier_has_parity(tokenizer, tmp_path):
    """Per-piece logits with dynamic batch and sequence axes: ONNX Runtime agrees with PyTorch."""
    import warnings

    import onnxruntime as ort
    import torch

    from kftune.inference.runners import onnx_runner, torch_runner

    model = tiny_token_model(5).eval()
    sample = tokenizer(["a short one", "a second, somewhat longer example sentence"], padding=True,
                       return_tensors="pt")
    names = ["input_ids", "attention_mask"]

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    path = tmp_path / "model.onnx"
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": tce.ONNX_LOGITS_AXES}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings; parity is checked below
        torch.onnx.export(LogitsOnly(model), tuple(sample[n] for n in names), str(path), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)
    tokens, tags = toy_sentences(10)
    tokens[3] = tokens[3] * 4  # a longer sentence: batches of different widths
    tags[3] = tags[3] * 4
    encoded = tcd.encode(tokenizer, tokens, None, None, max_length=64)
    reference = tce.piece_logits(torch_runner(model), encoded, batch_size=4)
    exported = tce.piece_logits(onnx_runner(ort.InferenceSession(str(path))), encoded, batch_size=4)
    assert [len(x) for x in exported] == [len(x) for x in encoded["input_ids"]]
    parity = tce.logits_parity(reference, exported, encoded["word_ids"])
    assert parity["max_abs_diff"] < 1e-4 and parity["mismatched_words"] == 0
    assert parity["words"] == sum(len(t) for t in tokens)
    predicted, word_scores = tce.predict_word_tags(torch_runner(model), encoded, [len(t) for t in tokens],
                                                  ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])
    assert [len(p) for p in predicted] == [len(t) for t in tokens]
    assert all(tcd.repair_iob2(p)[1] == 0 for p in predicted)  # valid IOB2
    # a deliberately different run is caught
    shifted = [x + [0, 0, 0, 0, 10] for x in reference]
    assert tce.logits_parity(reference, shifted, encoded["word_ids"])["mismatched_words"] > 0


# --- the stages --------------------------------------------------------------------------------


def test_preprocess_writes_a_token_dataset(token_run):
    from kftune.data.schema import SPLITS_DIR, dataset_task, load_splits, load_test_split

    work, stats, _, _ = token_run
    assert stats["task"] == "token-classification" and stats["task_decided"].startswith("auto:")
    assert stats["rows_read"] == 400 and sum(stats["split_sizes"].values()) == 400
    assert stats["converted_tags"]["iob1_to_iob2"] == 1
    assert stats["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert dataset_task(work / "dataset")["labels"] == stats["labels"]
    splits, _ = load_splits(work / "dataset")
    test = load_test_split(work / "test_split")
    assert {"tokens", "tags", "input_ids", "attention_mask", "word_ids", "label", "length"} <= set(test.column_names)
    row = test[0]
    first = [p for p, w in enumerate(row["word_ids"]) if w >= 0 and (p == 0 or row["word_ids"][p - 1] != w)]
    assert [row["label"][p] for p in first] == row["tags"]
    assert (work / "dataset" / SPLITS_DIR).is_dir()
    assert sum(stats["label_distribution"]["test"].values()) == sum(len(t) for t in test["tokens"])
    assert stats["label_distribution"]["train"]["B-PER"] == sum(row.count(3) for row in splits["train"]["tags"])

    from kftune.components.preprocess.report import data_report_html

    assert "B-PER" in data_report_html(stats, stats["_lengths"])


def test_training_and_evaluation_beat_the_baseline(token_run):
    _, _, result, _ = token_run
    assert result["task"] == "token-classification" and result["baseline"] == "most_frequent_tag"
    for part in (result["model"], result["baselines"]["most_frequent_tag"]):
        assert {"precision", "recall", "f1", "accuracy", "per_class", "confusion_matrix"} <= set(part)
    assert set(result["delta_vs_baseline"]) == {"precision", "recall", "f1", "accuracy"}
    # the toy data: the same words are people in one template and places in the other; only the context tells
    assert result["model"]["f1"] > 0.8, result["model"]
    assert result["delta_vs_baseline"]["f1"] >= 0.2, result  # the bar, here on toy data
    assert result["delta_vs_baseline"]["f1"] == pytest.approx(
        result["model"]["f1"] - result["baselines"]["most_frequent_tag"]["f1"])
    assert set(result["model"]["per_class"]) == {"LOC", "PER"}
    # every gain with its paired bootstrap interval over the test sentences; the gate can hold the lower bound
    check_intervals(result)
    check_the_gate_can_require_the_lower_bound(result, TASKS["token-classification"])


def test_export_parity_and_text_outputs(token_run, tokenizer):
    import onnxruntime as ort

    from kftune.inference.runners import onnx_runner
    from kftune.tasks import task_named

    work, _, _, export = token_run
    assert export["parity"]["prediction_mismatches"] == 0 and export["parity"]["max_abs_logit_diff"] < 1e-3
    task = task_named("token-classification")
    run = onnx_runner(ort.InferenceSession(str(work / "export" / "model.onnx")))
    info = {"labels": ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]}
    text = "We met Jordan  near Paris today"
    answers, v2 = task.answers(run, tokenizer, {"text": [text]}, info, max_length=64)
    ((answer,),) = [[a["entities"]] for a in answers]
    assert {(e["entity_group"], e["word"]) for e in answer} >= {("PER", "Jordan"), ("LOC", "Paris")}, answer
    assert all(text[e["start"]:e["end"]] == e["word"] for e in answer)
    ((name, datatype, array),) = v2
    assert (name, datatype, array.shape) == ("entities", "BYTES", (1,)) and json.loads(array[0]) == answer


def test_serving_answers_entities_over_v1_and_v2(token_run):
    import asyncio

    import numpy as np
    from kserve import InferInput, InferRequest

    from kftune.components.serve.serve import TextModel

    work, _, _, _ = token_run
    server = TextModel("ner", work / "export")
    assert server.load()
    texts = ["Chelsea Smith lives in Austin", "We met Florence near   Georgia today", ""]
    first, second, empty = (a["entities"] for a in asyncio.run(server.predict({"instances": texts}))["predictions"])
    assert empty == []
    for text, answer in ((texts[0], first), (texts[1], second)):
        assert answer and all(text[e["start"]:e["end"]] == e["word"] and 0 < e["score"] <= 1 for e in answer)
    assert ("LOC", "Georgia") in {(e["entity_group"], e["word"]) for e in second}, second

    tensor = InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(texts[:2], dtype=np.object_), binary_data=False)
    response = asyncio.run(server.predict(InferRequest(model_name="ner", infer_inputs=[tensor])))
    (output,) = response.outputs
    assert output.name == "entities" and output.datatype == "BYTES"
    assert [json.loads(x) for x in output.data] == [first, second]
    assert server.get_output_types() == [{"name": "entities", "datatype": "BYTES", "shape": [-1]}]


def test_the_predict_step_writes_entities_per_row(token_run, tmp_path):
    from kftune.components.predict.config import PredictConfig
    from kftune.components.predict.predict import predict

    work, _, _, _ = token_run
    texts = ["We met Austin near Paris today", "nothing here"]
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    summary = predict(work / "export", PredictConfig(predict_input=str(tmp_path / "in.csv"),
                                                     predict_output=str(tmp_path / "out.csv")))
    assert summary["task"] == "token-classification" and summary["rows"] == 2
    out = pd.read_csv(tmp_path / "out.csv")
    entities = [json.loads(e) for e in out["entities"]]
    assert ("LOC", "Paris") in {(e["entity_group"], e["word"]) for e in entities[0]}, entities
    assert all(texts[i][e["start"]:e["end"]] == e["word"] for i, row in enumerate(entities) for e in row)


def test_task_auto_recognises_token_data_and_the_stage_names_bad_rows(tmp_path):
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import prepare as prepare_rows
    from kftune.components.preprocess.preprocess import read_data

    rows = [{"tokens": ["Ada", "codes"], "tags": ["B-PER", "O"]}] * 3 + [{"tokens": ["Bob"], "tags": ["B-PER", "O"]}]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    conll = write_conll(tmp_path / "d.iob", [["Ada"]], [["B-PER"]])
    for path in (jsonl, conll):
        config, _, decided = read_data(PreprocessConfig(data=str(path)))
        assert config.task == "token-classification" and decided.startswith("auto:"), decided
    config, _, _ = read_data(PreprocessConfig(data=str(jsonl)))
    assert error_of(lambda: prepare_rows(config)) == (
        f"{jsonl}: line 4: 1 tokens but 2 tags; expected one tag per token")


def test_the_evaluate_component_logs_the_entity_type_confusion_matrix(token_run, tmp_path):
    """The evaluate component's own body on a token-classification model: KFP's ClassificationMetrics gets the
    word-level matrix with its own row names (entity types), which differ from the task's labels (IOB2 tags)."""
    from types import SimpleNamespace

    from kfp.dsl import ClassificationMetrics, Metrics

    from kftune.components.evaluate.component import evaluate as component

    work, _, result, _ = token_run
    classification, metrics = ClassificationMetrics(name="c"), Metrics(name="m")
    passed = component(dataset=SimpleNamespace(path=str(work / "dataset")),
                       test_split=SimpleNamespace(path=str(work / "test_split")),
                       model=SimpleNamespace(path=str(work / "model")), metrics=metrics, classification=classification,
                       report=SimpleNamespace(path=str(tmp_path / "r.html")),
                       summary=SimpleNamespace(path=str(tmp_path / "s.md")))
    assert passed == result["passed"]
    logged = classification.metadata["confusionMatrix"]
    assert [c["displayName"] for c in logged["annotationSpecs"]] == result["model"]["confusion_labels"]
    assert len(result["model"]["confusion_labels"]) != len(result["labels"])
    assert metrics.metadata["model_f1"] == pytest.approx(result["model"]["f1"])
    assert metrics.metadata["delta_f1_ci_low"] == pytest.approx(result["intervals"]["f1"]["ci_low"])
    assert "95% interval" in (tmp_path / "s.md").read_text() and "95% interval" in (tmp_path / "r.html").read_text()


def test_the_token_data_settings_name_columns_format_and_strictness(tmp_path):
    """tokens_column / tags_column / token_format / strict_iob2 reach the stage: other column names are read and
    detected, a CoNLL file with another suffix is read when named, and strict IOB2 refuses what is otherwise
    converted, naming file, line and token."""
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import prepare as prepare_rows
    from kftune.components.preprocess.preprocess import read_data

    read = tc.TASK.read

    def prepare_tokens(config):
        prepared = prepare_rows(config)
        return prepared.frame, prepared.source, prepared.rows_read, {**prepared.removed,
                                                                      **prepared.stats["converted_tags"]}

    rows = [{"words": ["Ada", "codes", "in", "Paris", str(i)], "ner": ["B-PER", "O", "O", "I-LOC", "O"]}
            for i in range(12)]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    named = PreprocessConfig(data=str(jsonl), tokens_column="words", tags_column="ner")
    config, _, decided = read_data(named)
    assert config.task == "token-classification" and "columns words and ner" in decided, decided
    frame, _, _, counts = prepare_tokens(config)
    assert frame[tcd.TAGS].tolist()[0] == ["B-PER", "O", "O", "B-LOC", "O"] and counts["iob1_to_iob2"] == 12
    assert "no column 'tokens'" in error_of(lambda: prepare_rows(PreprocessConfig(data=str(jsonl),
                                                                                   task="token-classification")))
    strict = PreprocessConfig(data=str(jsonl), task="token-classification", tokens_column="words",
                              tags_column="ner", strict_iob2=True)
    assert error_of(lambda: prepare_rows(strict)) == (
        f"{jsonl}: line 1, token 3 ('Paris'): tag 'I-LOC' starts an entity; expected B- at an entity's start "
        "(IOB2) with strict IOB2 checking")
    dat = tmp_path / "d.dat"
    dat.write_text(CONLL, encoding="utf-8")
    config = PreprocessConfig(data=str(dat), task="token-classification", token_format="conll")
    frame, _, _, _ = read(config)
    assert frame[tcd.TOKENS].tolist() == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
