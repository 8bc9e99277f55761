"""Padding-free encoder batches: the same logits and gradients as the padded model (fp32, dropout off), for
the BERT family, with LoRA and prompt tuning, and in the training loop."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch

from kftune.training.unpadded import enable_padding_free, padded_position_ids

WIDTH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=80, vocab_size=300, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny(kind: str, head: str, num_labels: int = 3):
    import transformers

    if kind == "distilbert":
        config = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=300,
                                               max_position_embeddings=80, dropout=0.0, attention_dropout=0.0,
                                               seq_classif_dropout=0.0, num_labels=num_labels)
    else:
        config_class = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig,
                        "electra": transformers.ElectraConfig}[kind]
        config = config_class(**WIDTH, num_labels=num_labels, pad_token_id=1 if kind == "roberta" else 0)
    auto = {"sequence": transformers.AutoModelForSequenceClassification,
            "token": transformers.AutoModelForTokenClassification}[head]
    torch.manual_seed(0)
    return auto.from_config(config, attn_implementation="sdpa")


def padded_batch(pad_id: int, batch: int = 6, width: int = 24, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, width + 1, (batch,), generator=generator)
    lengths[0] = width
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = torch.randint(5, 300, (batch, width), generator=generator)
    ids = torch.where(mask.bool(), ids, pad_id)
    return ids, mask


def forward_backward(model, ids, mask, labels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(padded, unpadded, ids, mask, labels):
    out_p, grads_p = forward_backward(padded, ids, mask, labels)
    out_u, grads_u = forward_backward(unpadded, ids, mask, labels)
    logits_p, logits_u = out_p.logits, out_u.logits
    if logits_p.dim() == 3:  # per-token logits: compare at the real tokens
        logits_p, logits_u = logits_p[mask.bool()], logits_u[mask.bool()]
    torch.testing.assert_close(logits_u, logits_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_u.loss, out_p.loss, rtol=1e-6, atol=1e-7)
    assert grads_u.keys() == grads_p.keys() and grads_p
    for name, grad in grads_p.items():
        torch.testing.assert_close(grads_u[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "electra"])
@pytest.mark.parametrize("head", ["sequence", "token"])
def test_logits_and_gradients_equal_the_padded_model(kind, head):
    padded = tiny(kind, head).train()
    unpadded = copy.deepcopy(padded)
    assert enable_padding_free(unpadded)
    pad_id = padded.config.pad_token_id or 0
    ids, mask = padded_batch(pad_id)
    labels = torch.randint(0, 3, (len(ids),)) if head == "sequence" else torch.where(
        mask.bool(), torch.randint(0, 3, ids.shape), -100)
    calls = []
    encoder = next(m for m in unpadded.modules() if getattr(m, "_kftune_unpadded", False))
    encoder.register_forward_hook(lambda module, args, out: calls.append(out.last_hidden_state.shape))
    assert_same(padded, unpadded, ids, mask, labels)
    assert calls and calls[0] == (*ids.shape, 32)  # re-padded for the head above


def test_the_encoder_layers_see_only_real_tokens():
    model = tiny("bert", "sequence")
    enable_padding_free(model)
    seen = []
    model.bert.encoder.layer[0].intermediate.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    ids, mask = padded_batch(0)
    model(input_ids=ids, attention_mask=mask)
    assert seen == [(1, int(mask.sum()), 32)]
    seen.clear()  # a batch without padding runs as it is
    model(input_ids=ids[:1], attention_mask=mask[:1])
    assert seen == [(1, ids.shape[1], 32)]


def test_lora_and_prompt_tuning_equal_the_padded_model():
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model

    ids, mask = padded_batch(0)
    labels = torch.randint(0, 3, (len(ids),))
    for adapter in (LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"],
                               lora_dropout=0.0),
                    PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=3)):
        torch.manual_seed(0)
        padded = get_peft_model(tiny("bert", "sequence"), adapter).train()
        unpadded = copy.deepcopy(padded)
        assert enable_padding_free(unpadded)
        assert_same(padded, unpadded, ids, mask, labels)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_position_ids_without_input_ids_are_the_padded_models_on_the_masks_device(kind):
    """peft's prompt tuning passes inputs_embeds and no input_ids: the position ids are built where the mask is
    (on a GPU, positions on the CPU indexed with the mask's CUDA index fail at the first step), and are the ones
    the padded model's embeddings use for inputs_embeds."""
    encoder = getattr(tiny(kind, "sequence"), kind)
    _, mask = padded_batch(encoder.config.pad_token_id or 0)
    embeds = torch.zeros(*mask.shape, 32)
    expected = (encoder.embeddings.create_position_ids_from_inputs_embeds(embeds, encoder.embeddings.padding_idx)
                if kind == "roberta" else encoder.embeddings.position_ids[:, : mask.shape[1]].expand(mask.shape))
    positions = padded_position_ids(encoder, None, mask)
    assert torch.equal(positions, expected.expand(mask.shape))
    on_meta = padded_position_ids(encoder, None, mask.to("meta"))
    assert on_meta.device == torch.device("meta") and on_meta.shape == mask.shape


def test_prompt_tuning_with_padding_free_batches_trains_a_step():
    from peft import PromptTuningConfig, TaskType, get_peft_model

    ids, mask = padded_batch(0)
    torch.manual_seed(0)
    model = get_peft_model(tiny("bert", "sequence"), PromptTuningConfig(task_type=TaskType.SEQ_CLS,
                                                                       num_virtual_tokens=3)).train()
    assert enable_padding_free(model)
    seen = []
    model.base_model.bert.embeddings.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs.get("input_ids"), kwargs["inputs_embeds"].shape,
                                                  kwargs["position_ids"].device)), with_kwargs=True)
    prompt = model.prompt_encoder.default.embedding.weight
    before = prompt.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(input_ids=ids, attention_mask=mask, labels=torch.randint(0, 3, (len(ids),))).loss.backward()
    optimizer.step()
    # the encoder ran on the real tokens and the 3 virtual ones of each text, from embeddings
    assert seen == [(None, (1, int(mask.sum()) + 3 * len(ids), 32), mask.device)]
    assert not torch.equal(prompt, before)


def test_other_architectures_keep_the_padded_path(caplog):
    import transformers

    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300, pad_token_id=0, num_labels=2)
    model = transformers.GPT2ForSequenceClassification(config)
    with caplog.at_level(logging.INFO, logger="kftune.train"):
        assert not enable_padding_free(model)
    assert "not a BERT-family encoder" in caplog.text
    eager = tiny("bert", "sequence")
    eager.config._attn_implementation = "eager"
    assert not enable_padding_free(eager)


def test_saved_model_keeps_its_attention_setting(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny("bert", "sequence")
    enable_padding_free(model)
    model.save_pretrained(tmp_path)
    assert "kftune" not in (tmp_path / "config.json").read_text()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.config._attn_implementation in ("sdpa", "eager")


def test_per_token_logits_are_zero_past_each_example():
    from kftune.inference.runners import predict_logits

    class Split(dict):
        column_names = ["input_ids"]

        def __len__(self):
            return 3

    def run(arrays):  # ones everywhere, padding included (a padding-free model's head gives its bias there)
        return np.ones((*arrays["input_ids"].shape, 2), dtype=np.float32)

    out = predict_logits(run, Split(input_ids=[[5, 6, 7], [5, 6], [5, 6, 7, 8]]), 2)
    assert out.shape == (3, 4, 2)
    assert out[1, :2].sum() == 4 and out[1, 2:].sum() == 0 and out[0, 3:].sum() == 0 and out[2].sum() == 8


def test_training_loop_packing_on_and_off_agree_without_dropout(tmp_path, prepared, caplog):
    """The loop's padding-free path (packing, the default) trains the same model as padded batches when dropout
    is off: the same step losses and weights to float tolerance."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    source = prepared / "tokenizer"
    config = BertConfig(**{**WIDTH, "vocab_size": AutoTokenizer.from_pretrained(source).vocab_size,
                           "max_position_embeddings": 512})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "base")
    histories, weights = {}, {}
    for packing in (True, False):
        settings = TrainConfig(model=str(tmp_path / "base"), num_train_epochs=1, max_steps=4,
                               per_device_train_batch_size=8, logging_steps=1, packing=packing,
                               early_stopping_patience=0, learning_rate=1e-3)
        out = tmp_path / f"out-{packing}"
        with caplog.at_level(logging.INFO, logger="kftune.train"):
            train(settings, prepared, out)
        histories[packing] = [s["loss"] for s in json.loads((out / "training_history.json").read_text())["steps"]]
        weights[packing] = BertForSequenceClassification.from_pretrained(out).state_dict()
    assert "runs on the real tokens only" in caplog.text
    assert len(histories[True]) == 4
    np.testing.assert_allclose(histories[True], histories[False], rtol=1e-4)
    for name, tensor in weights[False].items():
        torch.testing.assert_close(weights[True][name], tensor, rtol=1e-3, atol=1e-5)
