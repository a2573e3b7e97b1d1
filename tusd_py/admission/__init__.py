"""Admission control: refusals before a body byte is read (policy.py decides, middleware.py
applies, system.py reads memory and disk, fallback.py keeps shared rate limits optional)."""
