"""inputs/__init__.py: what a run reads, in one package so that its identity can be recorded and checked. records.py
(dataset files -> records, bad rows quarantined), prompts.py (a record + an ablation config -> prompt text), model.py (a
checkpoint folder -> its shape), identity.py (what the inputs hold, to tell a touched file from a changed one)."""
