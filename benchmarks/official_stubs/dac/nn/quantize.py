from _unused import unused

ResidualVectorQuantize = unused('dac.nn.quantize', 'ResidualVectorQuantize')
