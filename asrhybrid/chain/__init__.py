"""LF-MMI (chain) training: the phone LM, the denominator graph, the numerator supervision."""
