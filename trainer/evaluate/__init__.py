"""Evaluation: image/pixel metrics (:mod:`.metrics`) and the Markdown report (:mod:`.report`)."""
