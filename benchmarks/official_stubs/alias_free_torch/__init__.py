from _unused import unused

Activation1d = unused('alias_free_torch', 'Activation1d')
