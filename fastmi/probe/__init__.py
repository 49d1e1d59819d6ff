"""Probes: fitting them for many layers at once, their families and softmaxes, memory, curves, scoring."""
