"""Fakes of the GPU stack for the tests: torch.cuda with a simulated caching allocator
(cuda.py) and nvidia-ml-py's `pynvml` module (pynvml.py), both driven by the scenario data of
vramplan.probe.fake. Nothing here is an oracle for byte counts of real kernels: the fakes
reproduce the *behaviour* the real libraries show (which device a call touches, when a context
appears, which exception a failure raises, how the allocator rounds and caches) so the CUDA
branch of probe, verify and the Trainer callback runs where there is no GPU.
"""
