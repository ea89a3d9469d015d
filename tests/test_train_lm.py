"""The byte-LM training example (jax_fa3.examples.train_lm) on the CPU
backend: the data split, that training lowers the loss with fa3 attention,
and that fa3 and xla attention train alike from the same seed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("optax")

from jax_fa3.examples import lm_data  # noqa: E402
from jax_fa3.examples import lm_model  # noqa: E402
from jax_fa3.examples import train_lm  # noqa: E402

# Tiny model, float32 (CPU): GQA 4 query heads over 2 KV heads.
TINY = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
            mlp_hidden=64, seq_len=64, batch_size=4, lr=3e-3, warmup_steps=5,
            eval_every=10, eval_batches=2, dtype="float32", seed=0)


def test_split_is_by_file_deterministic_and_disjoint():
  corpus = lm_data.load_corpus()
  assert not set(corpus.train_files) & set(corpus.val_files)
  n = len(corpus.train_files) + len(corpus.val_files)
  assert 0.02 < len(corpus.val_files) / n < 0.10
  assert all(lm_data.is_validation(f, 0.05) for f in corpus.val_files)
  assert not any("site-packages" in f for f in corpus.train_files)
  h = lm_data.unigram_entropy(corpus.train)
  assert 2.0 < h < math.log(256)  # nats; source text is far from uniform
  b = next(lm_data.train_batches(corpus.train, 3, 16, seed=1))
  assert b.shape == (3, 17) and b.dtype == np.int32
  np.testing.assert_array_equal(
      b, next(lm_data.train_batches(corpus.train, 3, 16, seed=1)))


@pytest.fixture(scope="module")
def fa3_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("train_lm")
  cfg = train_lm.make_config("cpu-small", attention="fa3", steps=30,
                             out_dir=str(out), **TINY)
  return train_lm.train(cfg, progress=False), out


def test_fa3_training_lowers_the_loss_and_writes_outputs(fa3_run):
  log, out = fa3_run
  losses = log["train"]["loss"]
  assert len(losses) == 30 and all(map(math.isfinite, losses))
  assert np.mean(losses[-5:]) < losses[0] - 1.0, losses
  val = log["val"]["loss"]
  assert log["val"]["step"] == [0, 10, 20, 30]
  assert val[-1] < val[0] - 1.0, val
  assert log["attention"] == "fa3" and log["backend"] == "cpu"
  assert log["n_params"] > 0 and log["tokens_per_s"] > 0
  assert log["unigram_entropy_nats"] > 2.0
  on_disk = json.loads((out / "train_fa3_64.json").read_text())
  assert on_disk["train"]["loss"] == losses
  assert (out / "train_fa3_64.png").stat().st_size > 0


def test_xla_and_fa3_attention_train_alike(fa3_run, tmp_path):
  # Same seed: same init and batches, so the losses agree to float32
  # rounding; step 0 checks the forward, steps 1-2 the backward through
  # the update (the warmup does not depend on the total step count).
  log_fa3, _ = fa3_run
  cfg = train_lm.make_config("cpu-small", attention="xla", steps=3,
                             out_dir=str(tmp_path), **TINY)
  log_xla = train_lm.train(cfg, progress=False, write_files=False)
  np.testing.assert_allclose(log_xla["train"]["loss"],
                             log_fa3["train"]["loss"][:3], rtol=1e-4)
  np.testing.assert_allclose(log_xla["val"]["loss"][0],
                             log_fa3["val"]["loss"][0], rtol=1e-4)


def test_cudnn_without_gpu_names_the_flag():
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() == "gpu":
    pytest.skip("a GPU is present")
  with pytest.raises(ValueError, match="--attention=cudnn"):
    lm_model.check_attention_available("cudnn")
