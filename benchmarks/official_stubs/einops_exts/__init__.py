from _unused import unused

rearrange_many = unused('einops_exts', 'rearrange_many')
