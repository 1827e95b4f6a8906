"""Image processing, tokenizer and chat template (model.md §3, §8, §9).

    from kvl_core.processor import Processor
    proc = Processor.from_pretrained("path/to/Kimi-VL-A3B-Instruct")
    inputs = proc([{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                                {"type": "text", "text": "What is this?"}]}])
"""

from kvl_core.processor.chat import (
    DEFAULT_SYSTEM_PROMPT,
    THINK_CLOSE,
    THINK_OPEN,
    EncodedChat,
    Processor,
    image_parts,
    render_text,
    split_thinking,
)
from kvl_core.processor.image import DEFAULT_MAX_PIXELS, ImagePlan, ImageProcessor, load_image, to_rgb
from kvl_core.processor.tokenizer import PAT_STR, KimiTokenizer, load_bpe_ranks

__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_SYSTEM_PROMPT", "PAT_STR", "THINK_CLOSE", "THINK_OPEN",
    "EncodedChat", "ImagePlan", "ImageProcessor", "KimiTokenizer", "Processor",
    "image_parts", "load_bpe_ranks", "load_image", "render_text", "split_thinking", "to_rgb",
]
