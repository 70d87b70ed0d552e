"""llama.cpp itself as the oracle (optional: `pip install llama-cpp-python gguf`, which compiles
llama.cpp for the CPU; about 25 minutes on 2 cores).

1. Buffers: small GGUF models written with the gguf package are loaded by llama.cpp on the CPU
   (-ngl 0) at several contexts, batch sizes, flash-attention settings, cache types and slot
   counts; the "model buffer size", "KV buffer size", "compute buffer size" and "output buffer
   size" it logs are compared with vramplan's plan (`--n-gpu-layers 0`, the CPU side).
2. Quantization: an F16 llama-shaped model is quantized by llama.cpp's own quantizer
   (llama_model_quantize) to several mixes; vramplan plans the same mix from the equivalent HF
   config.json, and the tensor bytes (and every tensor's type) are compared.

    python benchmarks/llama_cpp_oracle.py            # prints the tables recorded in docs/llama-cpp.md
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

try:
    import gguf  # noqa: E402
except ImportError:
    sys.exit("needs the gguf package: pip install gguf")

from vramplan import api  # noqa: E402
from vramplan.spec.gguf import FILE_TYPE_ID  # noqa: E402

MiB = 2**20
RUN = r"""
import sys, json, llama_cpp
a = json.loads(sys.argv[1])
llama_cpp.llama_backend_init()
mp = llama_cpp.llama_model_default_params()
mp.n_gpu_layers = 0
model = llama_cpp.llama_model_load_from_file(a["path"].encode(), mp)
cp = llama_cpp.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch = a["ctx"], a.get("batch", 2048), a.get("ubatch", 512)
cp.n_seq_max = a.get("np", 1)
cp.swa_full = False                   # llama-server's default (common.h); the library's is true
cp.kv_unified = a.get("kvu", False)
cp.flash_attn_type = {"on": 1, "off": 0}[a.get("fa", "off")]
if a.get("ctk"):
    cp.type_k = cp.type_v = a["ctk"]
assert llama_cpp.llama_init_from_model(model, cp)
"""
QUANT = r"""
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""


def write_model(path: Path, *, arch="llama", n_layer=4, n_embd=256, n_ff=768, n_head=8, n_kv=4, vocab=2048,
                swa=0, seed=0):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(32768)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if swa:
        w.add_sliding_window(swa)
    w.add_tokenizer_model("llama")
    w.add_token_list([b"<unk>", b"<s>", b"</s>"] + [f"t{i}".encode() for i in range(vocab - 3)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(seed)
    hd = n_embd // n_head

    def t(name, shape, dtype=np.float16):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(dtype))

    t("token_embd.weight", (vocab, n_embd))
    for i in range(n_layer):
        p = f"blk.{i}."
        t(p + "attn_norm.weight", (n_embd,), np.float32)
        t(p + "attn_q.weight", (n_head * hd, n_embd))
        t(p + "attn_k.weight", (n_kv * hd, n_embd))
        t(p + "attn_v.weight", (n_kv * hd, n_embd))
        t(p + "attn_output.weight", (n_embd, n_head * hd))
        if arch == "gemma3":
            t(p + "attn_q_norm.weight", (hd,), np.float32)
            t(p + "attn_k_norm.weight", (hd,), np.float32)
            t(p + "post_attention_norm.weight", (n_embd,), np.float32)
            t(p + "post_ffw_norm.weight", (n_embd,), np.float32)
        t(p + "ffn_norm.weight", (n_embd,), np.float32)
        t(p + "ffn_gate.weight", (n_ff, n_embd))
        t(p + "ffn_up.weight", (n_ff, n_embd))
        t(p + "ffn_down.weight", (n_embd, n_ff))
    t("output_norm.weight", (n_embd,), np.float32)
    if arch != "gemma3":
        t("output.weight", (vocab, n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_log(args: dict) -> dict:
    """The buffer sizes llama.cpp logs, in MiB as printed (2 decimals)."""
    out = subprocess.run([sys.executable, "-c", RUN, json.dumps(args)], capture_output=True, text=True)
    log = out.stdout + out.stderr
    found = {}
    for key, pattern in (("model", r"CPU_Mapped model buffer size =\s+([\d.]+) MiB"),
                         ("kv", r"CPU KV buffer size =\s+([\d.]+) MiB"),
                         ("compute", r"CPU compute buffer size =\s+([\d.]+) MiB"),
                         ("output", r"CPU\s+output buffer size =\s+([\d.]+) MiB")):
        values = re.findall(pattern, log)
        found[key] = sum(float(v) for v in values) if values else None
    if found["kv"] is None:
        raise RuntimeError(f"llama.cpp did not load {args}:\n{log[-3000:]}")
    return found


def vramplan_cpu(args: dict) -> dict:
    flags = dict(engine="llama.cpp", n_gpu_layers=0, ctx=args["ctx"], parallel=args.get("np", 1),
                 batch_size=args.get("batch", 2048), ubatch_size=args.get("ubatch", 512),
                 flash_attn=args.get("fa") or "off")
    if args.get("kvu"):
        flags["kv_unified"] = True
    if args.get("ctk_name"):
        flags.update(cache_type_k=args["ctk_name"], cache_type_v=args["ctk_name"])
    p = api.plan(args["path"], "rtx-4090", **flags)
    cpu = p.local.devices[-1]
    return {"model": cpu.mapped / MiB, "kv": cpu.kv / MiB, "compute": cpu.compute / MiB, "output": cpu.output / MiB}


def buffers_table(tmp: Path) -> list[str]:
    dense, wide, gemma = tmp / "dense.gguf", tmp / "wide.gguf", tmp / "gemma.gguf"
    write_model(dense)
    write_model(wide, n_embd=512, n_ff=4096, n_head=8, n_kv=2, vocab=32000, n_layer=3)
    write_model(gemma, arch="gemma3", n_layer=6, swa=512, n_embd=256, n_ff=1024, n_head=4, n_kv=1)
    cases = [
        ("dense 4L, -c 4096, fa off", dict(path=str(dense), ctx=4096, fa="off")),
        ("dense, -c 8192, fa off", dict(path=str(dense), ctx=8192, fa="off")),
        ("dense, -c 4096, fa on", dict(path=str(dense), ctx=4096, fa="on")),
        ("dense, -c 16384, fa on", dict(path=str(dense), ctx=16384, fa="on")),
        ("dense, -c 4096, -ub 256, fa off", dict(path=str(dense), ctx=4096, ubatch=256, fa="off")),
        ("dense, -c 4096, -ub 1024 -b 1024, fa on", dict(path=str(dense), ctx=4096, ubatch=1024, batch=1024, fa="on")),
        ("dense, -c 8192 -np 4, fa on", dict(path=str(dense), ctx=8192, np=4, fa="on")),
        ("dense, -c 8192 -np 4 --kv-unified, fa on", dict(path=str(dense), ctx=8192, np=4, fa="on", kvu=True)),
        ("dense, -c 5000 -np 3, fa on (padding)", dict(path=str(dense), ctx=5000, np=3, fa="on")),
        ("dense, -c 4096, q8_0 K/V, fa on", dict(path=str(dense), ctx=4096, fa="on", ctk=8, ctk_name="q8_0")),
        ("dense, -c 4096, q4_0 K/V, fa on", dict(path=str(dense), ctx=4096, fa="on", ctk=2, ctk_name="q4_0")),
        ("wide FFN, vocab 32000, -c 4096, fa on", dict(path=str(wide), ctx=4096, fa="on")),
        ("wide FFN, vocab 32000, -c 4096, fa off", dict(path=str(wide), ctx=4096, fa="off")),
        ("gemma3 SWA 512, -c 8192, fa on", dict(path=str(gemma), ctx=8192, fa="on")),
        ("gemma3 SWA 512, -c 8192 -np 2, fa on", dict(path=str(gemma), ctx=8192, np=2, fa="on")),
    ]
    rows = ["| case | model MiB (llama.cpp / vramplan) | KV MiB | compute MiB | output MiB |",
            "|---|---|---|---|---|"]
    for name, args in cases:
        real, plan = llama_log(args), vramplan_cpu(args)
        cells = []
        for key in ("model", "kv", "compute", "output"):
            r, v = real[key], plan[key]
            mark = "" if r is None or abs(r - v) <= 0.05 else " ✗"     # the log prints 2 decimals
            cells.append(f"{'-' if r is None else f'{r:.2f}'} / {v:.2f}{mark}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def quant_table(tmp: Path) -> list[str]:
    src = tmp / "f16.gguf"
    cfg = dict(n_layer=8, n_embd=512, n_ff=1536, n_head=8, n_kv=2, vocab=4096)
    write_model(src, **cfg)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": cfg["n_embd"],
              "intermediate_size": cfg["n_ff"], "num_hidden_layers": cfg["n_layer"],
              "num_attention_heads": cfg["n_head"], "num_key_value_heads": cfg["n_kv"],
              "vocab_size": cfg["vocab"], "max_position_embeddings": 32768, "tie_word_embeddings": False,
              "torch_dtype": "float16", "rms_norm_eps": 1e-6}
    (tmp / "hf").mkdir(exist_ok=True)
    (tmp / "hf" / "config.json").write_text(json.dumps(config))
    from vramplan.engines.llama_cpp.quantize import plan_file
    from vramplan.loading import load_model

    hf = load_model(str(tmp / "hf"))
    rows = ["| mix | llama.cpp tensor bytes | vramplan planned | difference | tensor types equal |",
            "|---|---|---|---|---|"]
    for mix in ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q3_K_L", "Q2_K",
                "IQ4_XS", "IQ4_NL"):
        out = tmp / f"{mix}.gguf"
        r = subprocess.run([sys.executable, "-c", QUANT, str(src), str(out), str(FILE_TYPE_ID[mix])],
                           capture_output=True, text=True)
        if r.returncode:
            rows.append(f"| {mix} | quantize failed | | | |")
            continue
        real = load_model(str(out)).gguf
        planned = plan_file(hf, mix)
        types_real = {t.name: t.type for t in real.tensors}
        same = all(types_real.get(t.name) == t.type for t in planned.tensors)
        diff = (planned.tensor_bytes - real.tensor_bytes) / real.tensor_bytes * 100
        rows.append(f"| {mix} | {real.tensor_bytes:,} | {planned.tensor_bytes:,} | {diff:+.3f} % | {same} |")
    return rows


def main() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit("needs llama-cpp-python (compiles llama.cpp): pip install llama-cpp-python")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("\n".join(buffers_table(tmp)))
        print()
        print("\n".join(quant_table(tmp)))


if __name__ == "__main__":
    main()
