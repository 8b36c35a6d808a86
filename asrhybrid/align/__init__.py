# Forced-alignment back-ends (asrhybrid.align.graphs.align); here, free of heavy imports, for the CLI.
BACKENDS = ("auto", "kaldi", "k2", "torch")
