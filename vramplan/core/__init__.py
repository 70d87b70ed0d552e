"""Pure computation: dataclasses in, dataclasses and integers out. No I/O, no heavy imports."""
