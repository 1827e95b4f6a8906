"""kvl core: the Kimi-VL model, processing, generation, training and checkpoint IO.

Depends only on torch, safetensors, numpy, pillow and tiktoken; never imports kvl_cli or kvl_tasks.
"""

__version__ = "0.1.0"
