"""Fashion-MNIST IDX loading and area resizing."""

import gzip

import numpy as np
import pytest

from tasks import data, fashion_mnist


def _write_idx(path, array, magic, *, compress=True):
  header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
  data = header + array.astype(np.uint8).tobytes()
  if compress:
    with gzip.open(str(path) + ".gz", "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)


def _fixture(tmp_path, n=5):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 28, 28))
  labels = rng.integers(0, 10, (n,))
  _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, 0x803)
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, 0x801, compress=False)
  return images, labels


def test_reads_a_written_fixture(tmp_path):
  images, labels = _fixture(tmp_path)
  x, y = fashion_mnist.load("test", directory=str(tmp_path))
  np.testing.assert_allclose(x, images / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(y, labels)


def test_errors_name_the_problem_and_the_install_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    fashion_mnist.load("test", directory=str(tmp_path / "absent"))
  images, _ = _fixture(tmp_path)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, 0x801)  # wrong magic
  with pytest.raises(ValueError, match="magic number"):
    fashion_mnist.read_idx(tmp_path / "t10k-images-idx3-ubyte", rank=3)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, 0x803)
  raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
  (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
  (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-7])  # truncated
  with pytest.raises(ValueError, match="the header says"):
    fashion_mnist.read_idx(tmp_path / "t10k-images-idx3-ubyte", rank=3)
  with pytest.raises(ValueError, match="unknown Fashion-MNIST split"):
    fashion_mnist.load("valid")


@pytest.mark.parametrize("size", [8, 16, 28, 5])
def test_area_resize_matches_upsample_then_block_mean(size):
  image = np.random.default_rng(1).random((2, 28, 28))
  # Independent oracle: repeat each pixel `size` times (a 28*size grid), then average blocks of 28.
  fine = image.repeat(size, axis=1).repeat(size, axis=2)
  expected = fine.reshape(2, size, 28, size, 28).mean(axis=(2, 4))
  np.testing.assert_allclose(data.area_resize(image, size), expected, rtol=1e-12, atol=1e-12)


def test_real_dataset_from_the_debian_package():
  x, y = fashion_mnist.load("train", size=8)
  assert x.shape == (60000, 8, 8) and x.dtype == np.float32 and y.shape == (60000,)
  assert sorted(np.bincount(y).tolist()) == [6000] * 10  # Fashion-MNIST is balanced
  assert 0.0 <= x.min() and x.max() <= 1.0
  x_test, y_test = fashion_mnist.load("test")
  assert x_test.shape == (10000, 28, 28) and np.bincount(y_test).tolist() == [1000] * 10


def test_write_atomically_gives_files_every_user_can_read(tmp_path):
  # A dataset cache on a shared machine: rw-r--r--, not mkstemp's rw-------; a rewrite keeps it so.
  target = tmp_path / "cache.npz"
  for content in (b"first", "second"):
    data.write_atomically(target, content)
    assert target.stat().st_mode & 0o777 == 0o644
  assert target.read_text() == "second"
  assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"]  # no temporary left beside it
