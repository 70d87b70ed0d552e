"""The layers of any model transformers knows, derived from transformers itself.

`meta.py` builds the config's own class on the meta device and lists every parameter tensor;
`kv.py` reads each layer's cache after a prefill on fake tensors; `oracle.py` compares both with
the analytic tier (benchmarks/coverage.py, docs/coverage.md). Those modules import torch and
transformers at load, so they are imported only inside functions, when a derivation runs.
"""
