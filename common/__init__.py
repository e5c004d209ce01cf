"""Leaves that every StreamScore package may import: the error hierarchy and filesystem resolution.

Nothing here imports ``operators``, ``pipeline`` or ``jobs``, so dependencies point one way:
``jobs -> pipeline -> operators -> common``.
"""
