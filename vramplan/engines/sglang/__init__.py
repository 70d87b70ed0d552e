"""SGLang serving: its static memory fraction, token pool, page size and start-up refusals.
The engine is engines/sglang/engine.py (registry.py loads it on first use); request.py imports
only options.py, so a plan for another engine never loads it."""
