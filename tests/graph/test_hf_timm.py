"""HF transformers (GPT-2, BERT, ViT, Llama from small configs, no download) and a handful of timm models."""

from __future__ import annotations

import pytest
import torch

from .zoo_check import check_zoo_model

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

IDS = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))


def _heads(graph, n_heads: int) -> list[dict]:
    return [g for g in graph.spec.groups() if g["blocks"] and g["blocks"][0] == n_heads]


def test_gpt2() -> None:
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    graph = check_zoo_model(transformers.GPT2LMHeadModel(cfg), {"input_ids": IDS})
    assert len(_heads(graph, 4)) == 4  # (q,k) and v classes in both layers, 4 heads of 8
    assert any("wte" in n for n in graph.spec.notes)  # tied lm_head / wte stored once, usages tied


def test_bert() -> None:
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=16)
    graph = check_zoo_model(transformers.BertModel(cfg), {"input_ids": IDS})
    assert len(_heads(graph, 4)) == 4


def test_vit() -> None:
    cfg = transformers.ViTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                 image_size=32, patch_size=8, num_labels=5)
    graph = check_zoo_model(transformers.ViTForImageClassification(cfg), {"pixel_values": torch.randn(2, 3, 32, 32)})
    assert len(_heads(graph, 4)) == 4
    kinds = {s.kind for s in graph.spec.sets}
    assert "position" in kinds  # class token and position embeddings


def test_llama() -> None:
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                                   intermediate_size=64, vocab_size=100, max_position_embeddings=16)
    graph = check_zoo_model(transformers.LlamaForCausalLM(cfg), {"input_ids": IDS})
    # rotary embeddings pin q / k dims inside a head; the SwiGLU gate / up pair is permuted together
    assert any(len(set(g["sets"])) >= 3 and g["size"] == 64 for g in graph.spec.groups())


def test_llama_grouped_query_attention_stays_correct() -> None:
    cfg = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=64, vocab_size=100, max_position_embeddings=16)
    check_zoo_model(transformers.LlamaForCausalLM(cfg), {"input_ids": IDS})


TIMM = ["resnet18", "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "convnext_atto", "efficientnet_b0",
        "mobilenetv3_small_050", "regnetx_002"]


@pytest.mark.parametrize("name", TIMM)
def test_timm(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    size = 224 if "vit" in name or "deit" in name else 64
    check_zoo_model(model, torch.randn(1, 3, size, size), calibrate=torch.randn(2, 3, size, size))
