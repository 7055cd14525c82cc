"""longvila.pipelines: LongVILA's five-stage training recipe and its trainer.

Read first: ``config`` (the stage table as typed configs), ``trainer`` (the loop), ``stages`` (how the
model, MM-SP and the data sets are wired into it), ``cli`` (``longvila train``). Then ``engine``
(DeepSpeed), ``checkpoint`` (atomic, verified, resumable), ``datasource`` (batches), ``evaluate``
(held-out short-video QA), ``logs``.
"""
