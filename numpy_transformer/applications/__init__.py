"""Applications built on the models: pretrained weights, fine-tuning, a character LM, attention analysis, plots.

Each file is one application; none of them is imported by the layers below.
"""
