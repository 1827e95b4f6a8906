"""Image processing, tokenizer and chat template (model.md §3, §8, §9)."""
