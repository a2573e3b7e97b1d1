"""Wire dialects: each parses requests into the commands of `commands.py` and formats
outcomes and errors. tus 1.0.0 (`tus1`) today; the IETF resumable-upload draft is the
next module here, over the same commands and rules."""
