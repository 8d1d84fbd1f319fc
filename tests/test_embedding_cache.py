import threading

import pytest
import torch

from napari_sam.engine.embedding_cache import EmbeddingCache
from napari_sam.engine.predictor import ImageEmbedding


def _emb(n_floats):
    return ImageEmbedding(torch.zeros(1, n_floats), (4, 4), 64)


def test_lru_bounded_by_bytes():
    cache = EmbeddingCache(max_bytes=3 * 400)
    for k in range(3):
        cache.put(k, _emb(100))  # 400 bytes each
    assert len(cache) == 3 and cache.nbytes == 1200
    assert cache.get(0) is not None  # 0 becomes most recent
    cache.put(3, _emb(100))
    assert 1 not in cache and 0 in cache and 3 in cache
    assert cache.nbytes <= cache.max_bytes


def test_replacing_a_key_updates_size_and_discard():
    cache = EmbeddingCache(max_bytes=10_000)
    cache.put(("a", 1), _emb(100))
    cache.put(("a", 1), _emb(200))
    assert cache.nbytes == 800 and len(cache) == 1
    cache.put(("b", 1), _emb(10))
    assert cache.discard(lambda k: k[0] == "a") == 1
    assert cache.nbytes == 40
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(ValueError):
        EmbeddingCache(0)


def test_concurrent_puts_keep_accounting_consistent():
    cache = EmbeddingCache(max_bytes=50 * 400)

    def worker(offset):
        for k in range(200):
            cache.put((offset, k), _emb(100))
            cache.get((offset, k // 2))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50
    assert cache.nbytes == 50 * 400
