"""End-to-end recipes built on the library: training on Multi30k and scoring an export.

Installed as the console scripts `kt-train-multi30k` and `kt-evaluate-export`.
"""
