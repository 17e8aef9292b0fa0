"""Data: a user's file read into records (text, pairs, chats), rendered through a template, checked for quality.

Torch-free: `validate` and `--help` run on this layer and the base modules alone.
"""
