"""Cross-modal retrieval metrics: one API, two backends that give the same numbers.

Row ``i`` of ``image_emb`` pairs with row ``i`` of ``audio_emb``. Scores are dot products (use unit-norm
embeddings for cosine similarity) of the inputs as float32 values. The rank of a query's true partner is
``1 + #(keys scoring above it)`` plus the tied keys per ``ties``; no N x N matrix is ever held.

* ``ties="pessimistic"`` (default): tied keys rank before the true one. A collapsed model that maps
  everything to one vector gets rank N, never a flattering rank 1.
* ``"optimistic"``: tied keys rank after it. ``"mean"``: the average of the two (may be fractional).

Near-ties are settled in float64 (:mod:`ciap_lib.retrieval.counting`, shared by both backends): a key is tied
when its float64 score is within the float64 rounding tolerance (~1e-13 for unit vectors) of the true
pair's, so exact duplicates tie, and scores closer than float32 can resolve (~6e-8) are still ordered.
Class R@1 (with ``labels``) uses each query's top-1: the lowest index among the keys tied with the best.

Backends (``method=``):

* ``"exact"`` (:mod:`~ciap_lib.retrieval.exact`): bf16 screen with a rigorous error bound, float32
  candidates, float64 near-ties. CPU; holds both matrices in memory (~12 bytes per pair and dimension).
  ~3x faster than blocked when most true pairs score above the bulk (a trained model).
* ``"blocked"`` (:mod:`~ciap_lib.retrieval.blocked`): float32 blocks of ``chunk_size**2`` scores on any
  device, reading memmaps chunk by chunk; float32 error band settled in float64.
* ``"auto"`` (default, :func:`~ciap_lib.retrieval.metrics.choose_method`): exact on the CPU when it fits
  in half the available memory, blocked on other devices or for memmaps larger than that.

>>> retrieval_metrics(image_emb, audio_emb, labels)      # R@1/5/10, median rank, class R@1 both ways
>>> topk(queries, keys, k=10)                            # (scores, indices), best first
"""
from ciap_lib.retrieval.metrics import METHODS, choose_method, metric_names, pair_ranks, retrieval_metrics
from ciap_lib.retrieval.neighbours import topk
from ciap_lib.retrieval.inputs import TIES

__all__ = ["METHODS", "TIES", "choose_method", "metric_names", "pair_ranks", "retrieval_metrics", "topk"]
