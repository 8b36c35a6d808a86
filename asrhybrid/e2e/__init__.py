"""Stages 9+: end-to-end systems (Deep Speech CTC, LAS, ContextNet RNN-T) on stage 3's tokens, trained by
asrhybrid.nnet.trainer and scored like the hybrid systems."""
