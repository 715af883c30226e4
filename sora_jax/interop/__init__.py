"""Pretrained weights from the PyTorch world: safetensors readers, key maps, converters."""
