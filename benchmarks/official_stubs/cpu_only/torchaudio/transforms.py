from _unused import unused

Resample = unused('torchaudio.transforms', 'Resample')
MelSpectrogram = unused('torchaudio.transforms', 'MelSpectrogram')
