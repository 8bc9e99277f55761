"""Padding-free encoder batches: the token-wise layers run on the real tokens only.

A padded batch of ``B`` texts of up to ``L`` tokens carries ``B * L`` token positions; on the
bundled reviews about half of them are padding, and every projection, feed-forward block,
LayerNorm and dropout of the encoder computes them all. :func:`enable_padding_free` hooks the
encoder (``BertModel``, ``RobertaModel``, ``DistilBertModel``, ...) of a Hugging Face model so that:

1. before the encoder runs, its inputs (``[B, L]``) become one row of the ``T`` real tokens
   (``[1, T]``), each with the position id and token type it has in the padded batch;
2. embeddings, projections, feed-forward blocks, LayerNorms and dropouts run on ``[1, T, hidden]``;
3. attention alone is computed per text: ``unpadded_attention`` scatters queries, keys and values
   back into the padded ``[B, heads, L, head_dim]`` layout, runs the same
   ``scaled_dot_product_attention`` with the padding mask the padded model uses, and gathers the
   real positions again (re-padding for the attention product alone: the fastest of the ways
   bench/attention_padding.py times here, nested jagged tensors among them);
4. after the encoder, its last hidden state is scattered back to ``[B, L, hidden]`` (zeros at
   padding) and the pooler, if any, runs on it, so the heads above (classification, per-token
   tagging, masked LM) see what they see in the padded model.

The arithmetic is the padded model's on every real token (tests/test_unpadded.py checks logits and
gradients against the padded model in fp32 with dropout off); with dropout on, the masks are drawn
over other shapes, so runs differ like two seeds do. Padding positions' outputs are zeros instead
of the values the padded model computes there and then ignores.

Architectures whose encoder this does not cover keep the padded path (one log line says so).
"""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger("kftune.train")

ATTENTION = "kftune_unpadded"
# Encoders with the layout above: embeddings taking position ids, attention through transformers'
# attention interface (so per-call keyword arguments reach it), a last_hidden_state output.
SUPPORTED = ("BertModel", "RobertaModel", "XLMRobertaModel", "CamembertModel", "DistilBertModel", "ElectraModel")


class Unpadding:
    """Where the real tokens of a padded ``[B, L]`` batch are, and the moves between the two layouts."""

    def __init__(self, attention_mask: torch.Tensor):
        self.shape = attention_mask.shape
        self.keep = attention_mask.reshape(-1).nonzero().squeeze(1)  # flat positions of real tokens
        self.key_mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]: which keys a query may see

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """``[B, L, ...]`` -> ``[1, T, ...]``."""
        return padded.reshape(-1, *padded.shape[2:]).index_select(0, self.keep).unsqueeze(0)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """``[1, T, ...]`` -> ``[B, L, ...]``, zeros at padding."""
        rows = packed.new_zeros((self.shape[0] * self.shape[1], *packed.shape[2:]))
        return rows.index_copy(0, self.keep, packed[0]).view(*self.shape, *packed.shape[2:])


def unpadded_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, unpadding=None,
                       **kwargs):
    """transformers attention function: per-text attention of packed ``[1, heads, T, head_dim]`` projections
    (calls without ``unpadding`` are ordinary padded batches and go to the sdpa function)."""
    if unpadding is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    q, k, v = (unpadding.pad(x.transpose(1, 2)).transpose(1, 2) for x in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=unpadding.key_mask, dropout_p=dropout, scale=scaling)
    return unpadding.unpad(out.transpose(1, 2)), None


def _register() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS.register(ATTENTION, unpadded_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def padded_position_ids(encoder, input_ids: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """The position ids the encoder's embeddings give a padded batch with attention ``mask``: the column for
    BERT-style models, ``padding_idx + 1 + index among the real tokens`` for RoBERTa-style ones. On the mask's
    device: without ``input_ids`` (peft's prompt tuning passes ``inputs_embeds``) nothing else says where."""
    embeddings = encoder.embeddings
    if hasattr(embeddings, "create_position_ids_from_input_ids") and input_ids is not None:
        return embeddings.create_position_ids_from_input_ids(input_ids, embeddings.padding_idx)
    offset = embeddings.padding_idx + 1 if hasattr(embeddings, "create_position_ids_from_input_ids") else 0
    return (torch.arange(mask.shape[1], device=mask.device) + offset).expand(mask.shape)


def _find_encoder(model):
    for module in model.modules():
        if type(module).__name__ in SUPPORTED:
            return module
    return None


def enable_padding_free(model) -> bool:
    """Hook the encoder of ``model`` (a transformers model, possibly wrapped by peft) so that padded batches
    run padding-free; True if it did, False (and a log line) where the architecture keeps the padded path."""
    encoder = _find_encoder(model)
    name = type(getattr(model, "base_model", model)).__name__
    if encoder is None:
        log.info("padding-free batches: %s is not a BERT-family encoder; training on padded batches", name)
        return False
    if getattr(encoder, "_kftune_unpadded", False):
        return True
    if encoder.config._attn_implementation not in ("sdpa", ATTENTION):
        log.info("padding-free batches: %s uses %s attention, not sdpa; training on padded batches",
                 name, encoder.config._attn_implementation)
        return False
    _register()
    encoder.config._attn_implementation = ATTENTION
    parameters = list(inspect.signature(encoder.forward).parameters)

    def before(module, args, kwargs):
        kwargs = {**dict(zip(parameters, args, strict=False)), **kwargs}
        mask = kwargs.get("attention_mask")
        plain = not any(kwargs.get(k) for k in ("output_attentions", "output_hidden_states", "past_key_values",
                                                "encoder_hidden_states", "use_cache"))
        if mask is None or mask.dim() != 2 or bool(mask.all()) or not plain:
            module._kftune_unpadding = None
            return (), kwargs
        unpadding = Unpadding(mask)
        input_ids = kwargs.get("input_ids")
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = padded_position_ids(module, input_ids, mask)
        kwargs["position_ids"] = unpadding.unpad(positions.expand(mask.shape))
        for key in ("input_ids", "inputs_embeds", "token_type_ids"):
            if kwargs.get(key) is not None:
                kwargs[key] = unpadding.unpad(kwargs[key])
        kwargs["attention_mask"] = None
        kwargs["unpadding"] = unpadding
        module._kftune_unpadding = unpadding
        return (), kwargs

    def after(module, args, kwargs, output):
        unpadding, module._kftune_unpadding = module._kftune_unpadding, None
        if unpadding is None:
            return output
        hidden = unpadding.pad(output.last_hidden_state)
        output.last_hidden_state = hidden
        if getattr(module, "pooler", None) is not None:
            output.pooler_output = module.pooler(hidden)
        return output

    encoder.register_forward_pre_hook(before, with_kwargs=True)
    encoder.register_forward_hook(after, with_kwargs=True)
    encoder._kftune_unpadded = True
    log.info("padding-free batches: %s runs on the real tokens only (attention per text)", name)
    return True
