"""Tiny configs whose every byte can be derived by hand in a test comment."""

TINY_LLAMA = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
    "vocab_size": 256, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu",
}
# Parameters, by hand:
#   per layer: attention q 64*64=4096 + k 32*64=2048 + v 2048 + o 4096   = 12,288
#              MLP gate/up/down 128*64 = 8192 each                      = 24,576
#              two RMSNorms 2*64                                        =    128
#                                                                        -> 36,992
#   two layers                                                          -> 73,984
#   embed 256*64=16,384 + lm_head 16,384 + final norm 64                 -> 32,832
TINY_LLAMA_PARAMS = 106_816

TINY_MISTRAL_SWA = {**TINY_LLAMA, "model_type": "mistral", "architectures": ["MistralForCausalLM"],
                    "sliding_window": 32}
