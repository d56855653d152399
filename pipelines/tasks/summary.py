"""Summarisation: every field is text and the metrics (``rouge1``, ``rouge2``, ``rougeL``)
compare the answer with the ``summary`` field, so the defaults of ``task.py`` do the rest."""
