"""``python -m experiments.rnn_zoo {generate,predict}``: see :mod:`experiments.rnn_zoo.main`."""

from experiments.rnn_zoo.main import main

if __name__ == "__main__":
  raise SystemExit(main())
