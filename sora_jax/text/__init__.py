"""Caption tokenization (sentencepiece)."""
