from _unused import unused

ResidualVQ = unused('vector_quantize_pytorch', 'ResidualVQ')
FSQ = unused('vector_quantize_pytorch', 'FSQ')
