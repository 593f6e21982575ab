"""In-context-learning tools usable in any k-shot evaluation.

Backbone-agnostic host-side helpers plus one thin model seam:

  config           `ICLConfig`: the in-context settings of an unseen-task
                   evaluation (k-shot, seeds, method, order, ...).
  calibration      contextual calibration (Zhao et al. 2021) and PMI scores
                   over per-option log-scores [N, C].
  demo_selection   random demonstrations and a KATE kNN index (cosine
                   similarity of sentence embeddings).
  embeddings       mean-pooled sentence embeddings [B, H] from a frozen
                   DecoderLM or T5 encoder (the only module touching models).
  order_selection  entropy-based demonstration-order selection (Lu et al.
                   2022: GlobalE / LocalE over a model-generated probing set).
"""
