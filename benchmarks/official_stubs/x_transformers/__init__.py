from _unused import unused

ContinuousTransformerWrapper = unused('x_transformers', 'ContinuousTransformerWrapper')
Encoder = unused('x_transformers', 'Encoder')
Decoder = unused('x_transformers', 'Decoder')
