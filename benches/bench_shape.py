"""The bench's model shapes as transformers configs, shared by the decode baselines
(torch_decode.py, llama_cpp_decode.py): the same shapes `phi bench` builds (`baseline_config`)."""
from transformers import Phi3Config, Phi3ForCausalLM, PhiConfig, PhiForCausalLM


def config_for(arch, vocab, hidden, layers, heads, max_pos):
    """(config, model class) of the bench's phi or phi3 shape."""
    if arch == "phi":
        config = PhiConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                           num_hidden_layers=layers, num_attention_heads=heads, partial_rotary_factor=0.5,
                           max_position_embeddings=max_pos)
        return config, PhiForCausalLM
    inter = 8 * hidden // 3 // 64 * 64 or 4 * hidden
    config = Phi3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                        max_position_embeddings=max_pos, pad_token_id=0)
    return config, Phi3ForCausalLM
