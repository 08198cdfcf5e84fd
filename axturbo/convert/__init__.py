"""Import official AudioX-Turbo PyTorch weights (and Hugging Face T5/CLIP) into Flax trees."""
