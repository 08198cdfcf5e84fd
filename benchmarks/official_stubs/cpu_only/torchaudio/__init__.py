from torchaudio import transforms  # noqa: F401  (the official modules use the attribute)
