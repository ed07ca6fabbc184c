"""Inner training problems on real data: MLP, CNN, RNN and Transformer tasks.

Example:
  >>> import jax, tasks
  >>> task = tasks.get("mlp_fashion8")
  >>> params = task.init(jax.random.key(0))
  >>> loss = jax.jit(lambda task, key: task.loss(params, task.sample_batch(key)))(task, jax.random.key(1))
  >>> loss.shape, bool(loss > 0)
  ((), True)

A task is a pytree whose leaves are its device-resident data: pass it as an
argument of jitted functions rather than closing over it (see tasks.base).
"""

from tasks.base import ClassificationData, SequenceData, Task, TaskFamily
from tasks.registry import families, get, names

__all__ = ["ClassificationData", "SequenceData", "Task", "TaskFamily", "families", "get", "names"]
