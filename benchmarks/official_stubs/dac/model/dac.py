from _unused import unused

Encoder = unused('dac.model.dac', 'Encoder')
Decoder = unused('dac.model.dac', 'Decoder')
