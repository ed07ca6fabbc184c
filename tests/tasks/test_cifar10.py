"""CIFAR-10 batch decoding, resizing and errors, on fixtures in the exact ``cifar-10-batches-py`` format."""

import pickle

import numpy as np
import pytest

from tasks import cifar10

PER_BATCH = 6


def _write_batch(path, data, labels):
  with open(path, "wb") as f:
    pickle.dump(
      {b"batch_label": b"fixture", b"data": data, b"labels": labels, b"filenames": [b"x.png"] * len(labels)}, f
    )


def _fixture(directory, split="train"):
  """Writes the split's batch files with random pixels; returns the raw rows and labels, in file order."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(len(str(directory)))
  rows, labels = [], []
  for name in cifar10.FILES[split]:
    data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
    batch_labels = rng.integers(0, 10, PER_BATCH).tolist()  # a list of ints, as in the real files
    _write_batch(directory / name, data, batch_labels)
    rows.append(data)
    labels += batch_labels
  return np.concatenate(rows), labels


def test_pixels_follow_the_red_green_blue_row_major_layout(tmp_path):
  rows, labels = _fixture(tmp_path)
  images, y = cifar10.load("train", directory=tmp_path)
  assert images.shape == (5 * PER_BATCH, 32, 32, 3) and images.dtype == np.float32
  assert y.dtype == np.int32 and y.tolist() == labels
  # Independent indexing of the raw row: channel c, row r, column k is byte c * 1024 + r * 32 + k.
  for n, r, k, c in [(0, 0, 0, 0), (0, 0, 1, 0), (0, 1, 0, 0), (3, 5, 17, 1), (7, 31, 31, 2), (29, 12, 3, 2)]:
    assert images[n, r, k, c] == np.float32(rows[n, c * 1024 + r * 32 + k] / 255.0)
  assert images.min() == np.float32(rows.min() / 255.0) and images.max() == np.float32(rows.max() / 255.0)


def test_channel_order_on_a_solid_colour(tmp_path):
  row = np.concatenate([np.full(1024, 255), np.zeros(1024), np.full(1024, 51)]).astype(np.uint8)  # red 1, blue 0.2
  row[1024 + 2 * 32 + 5] = 102  # one green pixel at row 2, column 5
  _write_batch(tmp_path / "test_batch", row[None], [9])
  images, labels = cifar10.load("test", directory=tmp_path)
  expected = np.zeros((1, 32, 32, 3), np.float32)
  expected[..., 0], expected[..., 2], expected[0, 2, 5, 1] = 1.0, 0.2, 0.4
  np.testing.assert_allclose(images, expected, rtol=1e-6)
  assert labels.tolist() == [9]


def test_resize_to_16_is_the_mean_of_2x2_blocks(tmp_path):
  rows, _ = _fixture(tmp_path, "test")
  images, _ = cifar10.load("test", size=16, directory=tmp_path)
  assert images.shape == (PER_BATCH, 16, 16, 3) and images.dtype == np.float32
  for n, i, j, c in [(0, 0, 0, 0), (1, 7, 3, 1), (5, 15, 15, 2), (2, 8, 0, 2)]:
    block = [rows[n, c * 1024 + (2 * i + a) * 32 + (2 * j + b)] for a in (0, 1) for b in (0, 1)]
    assert images[n, i, j, c] == pytest.approx(sum(int(v) for v in block) / 4 / 255.0, rel=1e-6)


def test_cached_and_read_only(tmp_path, monkeypatch):
  _fixture(tmp_path, "test")
  images, labels = cifar10.load("test", directory=tmp_path)
  monkeypatch.setenv(cifar10.ENV_VAR, str(tmp_path))
  again = cifar10.load("test")  # the same folder through the environment variable
  assert again[0] is images and again[1] is labels
  assert cifar10.default_dir() == tmp_path
  assert not images.flags.writeable and not labels.flags.writeable


def test_absent_directory_says_how_to_provide_the_data(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"cannot be downloaded on this machine.*{cifar10.ENV_VAR}") as info:
    cifar10.load("test", directory=tmp_path / "absent")
  assert "cifar-10-batches-py" in str(info.value) and str(tmp_path / "absent") in str(info.value)


def test_a_missing_batch_file_is_named(tmp_path):
  _fixture(tmp_path)
  (tmp_path / "data_batch_3").unlink()
  with pytest.raises(ValueError, match="data_batch_3 is missing"):
    cifar10.load("train", directory=tmp_path)


@pytest.mark.parametrize(
  "data, labels, message",
  [
    (np.zeros((2, 3072), np.float32), [0, 1], r"uint8 array \(n, 3072\), found float32"),
    (np.zeros((2, 3071), np.uint8), [0, 1], r"found uint8 \(2, 3071\)"),
    (np.zeros((2, 3, 32, 32), np.uint8), [0, 1], "found uint8"),
    ([0] * 3072, [0], "found list"),
    (np.zeros((2, 3072), np.uint8), [0, 1, 2], "2 images but labels of shape"),
    (np.zeros((2, 3072), np.uint8), [0, 10], r"\[0, 10\), found \[0, 10\]"),
    (np.zeros((2, 3072), np.uint8), [-1, 3], r"found \[-1, 3\]"),
    (np.zeros((2, 3072), np.uint8), [0.0, 1.5], "labels must be integers"),
  ],
)
def test_malformed_batches_are_rejected_with_the_file_name(tmp_path, data, labels, message):
  _write_batch(tmp_path / "test_batch", data, labels)
  with pytest.raises(ValueError, match=message) as info:
    cifar10.load("test", directory=tmp_path)
  assert str(tmp_path / "test_batch") in str(info.value)


def test_unreadable_or_wrongly_keyed_files_are_rejected(tmp_path):
  (tmp_path / "test_batch").write_bytes(b"not a pickle")
  with pytest.raises(ValueError, match="test_batch is not a readable pickle"):
    cifar10.load("test", directory=tmp_path)
  with open(tmp_path / "test_batch", "wb") as f:
    pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}, f)  # str keys, not bytes
  with pytest.raises(ValueError, match="keys b'data' and b'labels'"):
    cifar10.load("test", directory=tmp_path)


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="unknown CIFAR-10 split 'valid'"):
    cifar10.load("valid", directory=tmp_path)
  with pytest.raises(ValueError, match="positive int"):
    cifar10.load("test", size=0, directory=tmp_path)
