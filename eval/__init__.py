"""longvila.eval: the long-video evaluations.

- ``needle``: needle in a haystack over (frame counts x depths), cached frame embeddings, resumable cells,
  no-needle controls, heatmap; ``needle_sp`` shards the long forward pass over ranks (MM-SP inference).
- ``videomme``: the Video-MME layout reader, the embedded benchmark in that layout, the frame sweep with a
  blind baseline and chance.
- ``prompts``: every prompt and the answer extraction; ``runner``: checkpoint loading, frame encoding and
  caching, teacher-forced scoring, greedy generation; ``base``: the benchmark registry.
- ``lmms_plugin``: the lmms-eval model (``--model longvila``); ``tasks/``: the local lmms-eval task.
"""
