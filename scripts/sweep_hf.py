"""Sweep HF transformers architectures (small configs, random weights, no download) through wsl.

For each architecture: convert, check the round trip bit for bit, and run :func:`wsl.verify_symmetries`
(float64, randomized weights, 3 random group elements). Prints one line per architecture and the coverage.

    python scripts/sweep_hf.py                 # all
    python scripts/sweep_hf.py t5 phi mixtral  # some
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import wsl

warnings.filterwarnings("ignore")
V = 100
IDS = {"input_ids": torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(0))}
DEC = {"input_ids": IDS["input_ids"], "decoder_input_ids": IDS["input_ids"][:, :5]}
SMALL = {"vocab_size": V, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4}


def cases():
    import transformers as T

    pix = {"pixel_values": torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))}
    return {
        "gpt2": (lambda: T.GPT2Model(T.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=V)), IDS),
        "bert": (lambda: T.BertModel(T.BertConfig(**SMALL)), IDS),
        "llama": (lambda: T.LlamaModel(T.LlamaConfig(**SMALL, num_key_value_heads=2)), IDS),
        "t5": (lambda: T.T5EncoderModel(T.T5Config(vocab_size=V, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                                   num_heads=4)), IDS),
        "mistral": (lambda: T.MistralModel(T.MistralConfig(**SMALL, num_key_value_heads=2)), IDS),
        "mixtral": (lambda: T.MixtralModel(T.MixtralConfig(**SMALL, num_key_value_heads=2, num_local_experts=4,
                                                           num_experts_per_tok=2)), IDS),
        "qwen2": (lambda: T.Qwen2Model(T.Qwen2Config(**SMALL, num_key_value_heads=2)), IDS),
        "gemma": (lambda: T.GemmaModel(T.GemmaConfig(**SMALL, num_key_value_heads=1, head_dim=8)), IDS),
        "phi": (lambda: T.PhiModel(T.PhiConfig(**SMALL, partial_rotary_factor=0.5)), IDS),
        "opt": (lambda: T.OPTModel(T.OPTConfig(vocab_size=V, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                               num_attention_heads=4, word_embed_proj_dim=32)), IDS),
        "bloom": (lambda: T.BloomModel(T.BloomConfig(vocab_size=V, hidden_size=32, n_layer=2, n_head=4)), IDS),
        "gpt_neox": (lambda: T.GPTNeoXModel(T.GPTNeoXConfig(**SMALL, rotary_pct=0.25)), IDS),
        "falcon": (lambda: T.FalconModel(T.FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=4)), IDS),
        "roberta": (lambda: T.RobertaModel(T.RobertaConfig(**SMALL)), IDS),
        "distilbert": (lambda: T.DistilBertModel(T.DistilBertConfig(vocab_size=V, dim=32, hidden_dim=64,
                                                                    n_layers=2, n_heads=4)), IDS),
        "albert": (lambda: T.AlbertModel(T.AlbertConfig(**SMALL, embedding_size=16)), IDS),
        "deberta_v2": (lambda: T.DebertaV2Model(T.DebertaV2Config(**SMALL)), IDS),
        "bart": (lambda: T.BartModel(T.BartConfig(vocab_size=V, d_model=32, encoder_layers=1, decoder_layers=1,
                                                  encoder_attention_heads=4, decoder_attention_heads=4,
                                                  encoder_ffn_dim=64, decoder_ffn_dim=64)), DEC),
        "mamba": (lambda: T.MambaModel(T.MambaConfig(vocab_size=V, hidden_size=32, state_size=4,
                                                     num_hidden_layers=2, expand=2)), IDS),
        "clip_vision": (lambda: T.CLIPVisionModel(T.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                                                     num_hidden_layers=2, num_attention_heads=4,
                                                                     image_size=28, patch_size=7)), pix),
        "dinov2": (lambda: T.Dinov2Model(T.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                        image_size=28, patch_size=7)), pix),
        "whisper_encoder": (lambda: T.WhisperModel(T.WhisperConfig(
            vocab_size=V, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8,
            max_source_positions=8, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
            suppress_tokens=None, begin_suppress_tokens=None)).get_encoder(),
            {"input_features": torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(0))}),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    table = cases()
    names = args.names or list(table)
    ok = 0
    for name in names:
        build, inputs = table[name]
        t0 = time.perf_counter()
        try:
            torch.manual_seed(0)
            model = build().eval()
            graph = wsl.to_graph(model, example_inputs=inputs)
            ref = model.state_dict()
            exact = all(torch.equal(graph.to_state_dict()[k], v) for k, v in ref.items())
            check = wsl.verify_symmetries(model, inputs, trials=args.trials, randomize=True)
            moved = min(t["moved"] for t in check.trials)
            good = exact and check.ok and moved > 0
            ok += good
            print(f"{name:16s} {'OK  ' if good else 'FAIL'} exact={exact} worst={check.worst:.1e} moved>={moved} "
                  f"free={check.free_classes} scale={check.scale_sets} notes={len(graph.spec.notes)} "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
            if not check.ok:
                print("    " + str(check).replace("\n", "\n    "), flush=True)
        except Exception as ex:  # noqa: BLE001
            print(f"{name:16s} FAIL {type(ex).__name__}: {str(ex).splitlines()[0][:240]}", flush=True)
    print(f"coverage: {ok}/{len(names)} architectures converted with an exact round trip and verified symmetries")


if __name__ == "__main__":
    main()
