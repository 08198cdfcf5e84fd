from _unused import unused

WNConv1d = unused('dac.model.discriminator', 'WNConv1d')
WNConv2d = unused('dac.model.discriminator', 'WNConv2d')
