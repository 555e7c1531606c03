"""Inference: seq2seq decoding (greedy and beam search) and sampling from a language model.

``search`` decodes the encoder–decoder models; ``sampling`` generates text with a GPT (temperature, top-k, top-p).
"""
