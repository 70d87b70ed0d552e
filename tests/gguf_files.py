"""Small GGUF files written at test time with the `gguf` package's GGUFWriter (the writer the
llama.cpp project publishes), so the reader is tested against a writer we did not write."""

from __future__ import annotations

from pathlib import Path

import numpy as np

gguf = __import__("pytest").importorskip("gguf")
Q = gguf.GGMLQuantizationType


def raw(type_: "gguf.GGMLQuantizationType", shape: tuple[int, ...]) -> np.ndarray:
    """Zero bytes of a tensor of `shape` (numpy order: rows last-but-one... i.e. (..., ne1, ne0))
    stored as `type_`: what GGUFWriter takes with raw_dtype."""
    blck, size = gguf.GGML_QUANT_SIZES[type_]
    *lead, ne0 = shape
    return np.zeros((*lead, ne0 // blck * size), dtype=np.uint8)


def write_llama(path: Path, *, n_layer=4, n_embd=256, n_ff=512, n_head=8, n_kv=2, vocab=1024,
                weight=Q.Q4_K, down=Q.Q6_K, out=Q.Q6_K, embd=Q.Q4_K, tied=False, ctx=8192,
                arch="llama", swa: int = 0, experts: int = 0, used: int = 0, file_type: int = 15,
                splits: int = 1) -> list[Path]:
    """A llama-shaped model; returns the file(s) written (a split set when splits > 1)."""
    head_dim = n_embd // n_head
    tensors: list[tuple[str, np.ndarray, object]] = []

    def add(name, shape, type_):
        if type_ in (Q.F32, Q.F16):
            tensors.append((name, np.zeros(shape, dtype=np.float32 if type_ == Q.F32 else np.float16), None))
        else:
            tensors.append((name, raw(type_, shape), type_))

    add("token_embd.weight", (vocab, n_embd), embd)
    for il in range(n_layer):
        p = f"blk.{il}."
        add(p + "attn_norm.weight", (n_embd,), Q.F32)
        add(p + "attn_q.weight", (n_head * head_dim, n_embd), weight)
        add(p + "attn_k.weight", (n_kv * head_dim, n_embd), weight)
        add(p + "attn_v.weight", (n_kv * head_dim, n_embd), down)
        add(p + "attn_output.weight", (n_embd, n_head * head_dim), weight)
        add(p + "ffn_norm.weight", (n_embd,), Q.F32)
        if experts:
            add(p + "ffn_gate_inp.weight", (experts, n_embd), Q.F32)
            add(p + "ffn_gate_exps.weight", (experts, n_ff, n_embd), weight)
            add(p + "ffn_up_exps.weight", (experts, n_ff, n_embd), weight)
            add(p + "ffn_down_exps.weight", (experts, n_embd, n_ff), down)
        else:
            add(p + "ffn_gate.weight", (n_ff, n_embd), weight)
            add(p + "ffn_up.weight", (n_ff, n_embd), weight)
            add(p + "ffn_down.weight", (n_embd, n_ff), down)
    add("output_norm.weight", (n_embd,), Q.F32)
    if not tied:
        add("output.weight", (vocab, n_embd), out)

    paths = [path] if splits == 1 else [path.with_name(f"{path.stem}-{i:05d}-of-{splits:05d}.gguf")
                                         for i in range(1, splits + 1)]
    per = -(-len(tensors) // splits)
    for i, p in enumerate(paths):
        w = gguf.GGUFWriter(str(p), arch)
        if i == 0:
            w.add_block_count(n_layer)
            w.add_context_length(ctx)
            w.add_embedding_length(n_embd)
            w.add_feed_forward_length(n_ff)
            w.add_head_count(n_head)
            w.add_head_count_kv(n_kv)
            w.add_layer_norm_rms_eps(1e-5)
            w.add_file_type(file_type)
            w.add_vocab_size(vocab)
            if swa:
                w.add_sliding_window(swa)
            if experts:
                w.add_expert_count(experts)
                w.add_expert_used_count(used)
        if splits > 1:
            w.add_uint16("split.no", i)
            w.add_uint16("split.count", splits)
        for name, data, raw_dtype in tensors[i * per:(i + 1) * per]:
            w.add_tensor(name, data, raw_dtype=raw_dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return paths
