"""longvila.data: the data side of the recipe, every set rebuilt with one command (``longvila data build``).

Modules (imported on use, so ``import longvila.data`` stays light):
- ``world``: the embedded synthetic video world (``make_video``, ``make_image``, ``code_image``, ``Event``);
- ``questions``: clip captions and whole-video questions from event logs or captions;
- ``video_io``: ``encode_mp4`` (bit-exact H.264) and ``read_frames`` (decord, PyAV fallback);
- ``shards``: verified webdataset shards and manifests, resumable builds;
- ``sets``: one builder per set (align, pretrain, short_sft, context_ext, long_sft, short_sft_eval);
- ``ingest``: a user's videos + captions, or LLaVA-style JSON, into the same shards;
- ``loader``: packed training batches (design.md "Data");
- ``bench``, ``preview``, ``cli``: benchmark, contact sheets, the ``longvila data`` command;
- ``vocab``: the world's words and the tokenizer corpus.
"""
