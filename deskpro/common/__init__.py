"""Helpers shared by every layer: files, images, state dicts, torch set-up.

Nothing here imports another deskpro package: every layer above may import this one.
"""
