"""The main job's runtime: workers, pools (in this process or as Ray actors), the learner, checkpoints, TensorBoard.

The only package of :mod:`metatrain` that imports ray or tensorboardX, and with
:mod:`metatrain.loading` (which reads checkpoints) the only one that imports orbax,
each in the one module that needs it (:mod:`~metatrain.runtime.ray_pool`,
:mod:`~metatrain.runtime.checkpoint`, :mod:`~metatrain.runtime.summaries`);
importing this package loads none of them. :mod:`~metatrain.runtime.config`
holds the run's configuration as plain values.
"""

from metatrain.runtime.config import TrainConfig, WorkerConfig

__all__ = ["TrainConfig", "WorkerConfig"]
