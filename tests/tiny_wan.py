"""A tiny random diffusers Wan2.1 T2V folder (transformer/, vae/, text_encoder/, tokenizer/),
laid out as the released ones are, for the tests of the Wan path (torch, diffusers and
transformers come with the test extra)."""
import pathlib

import sentencepiece as spm
import torch

# Shapes World's words, so the tiny tokenizer has real pieces for its captions.
CORPUS = ["A large red circle moving to the right on a black background.",
          "A small blue square in the top left, the camera is still.",
          "Two green triangles move from left to right; the camera pans.",
          "a yellow star on a white background bounces up and down"] * 8
TEXT_DIM = 32  # the UMT5's d_model = the transformer's text_dim


def _perturb_norms(model, scale=0.3):
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or "gamma" in name:
        p.add_(scale * torch.randn_like(p))


def build(folder: pathlib.Path, seed: int = 0) -> dict:
  """Writes the folder; returns the torch modules {transformer, vae, text_encoder} and the
  transformers tokenizer, as the reference pipeline's parts."""
  import diffusers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  folder = pathlib.Path(folder)
  tok_dir = folder / "tokenizer"
  tok_dir.mkdir(parents=True, exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_prefix=str(tok_dir / "spiece"), vocab_size=100,
      model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      minloglevel=2)
  tokenizer = transformers.T5Tokenizer.from_pretrained(str(tok_dir))
  text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
      vocab_size=256, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
      relative_attention_num_buckets=16, relative_attention_max_distance=32,
      feed_forward_proj="gated-gelu")).eval()
  transformer = diffusers.WanTransformer3DModel(
      patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
      out_channels=4, text_dim=TEXT_DIM, ffn_dim=48, num_layers=2, rope_max_seq_len=64).eval()
  vae = diffusers.AutoencoderKLWan(
      base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
      temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
      latents_std=[1.5, 0.8, 1.2, 2.0]).eval()
  for model in (text_encoder, transformer, vae):
    _perturb_norms(model)
  text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
  transformer.save_pretrained(folder / "transformer", safe_serialization=True)
  vae.save_pretrained(folder / "vae", safe_serialization=True)
  return dict(transformer=transformer, vae=vae, text_encoder=text_encoder,
              tokenizer=tokenizer)
