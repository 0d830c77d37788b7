"""Training problems for lopt: Task / TaskFamily, datasets, flax models and inner training.

Independent of `lopt`: everything here uses only jax, flax, optax and the data loaders.
"""

from lopt.tasks.base import Task, TaskFamily, TaskSpec
from lopt.tasks.families import (
    FAMILIES,
    NAMED_TASKS,
    ConvFamily,
    MLPFamily,
    QuadraticFamily,
    TransformerFamily,
    get_family,
    get_task,
    task_spec,
)
from lopt.tasks.tasks import (
    ClassificationTask,
    ConvSpec,
    LanguageModelTask,
    MLPSpec,
    QuadraticSpec,
    QuadraticTask,
    RegressionSpec,
    RegressionTask,
    RosenbrockSpec,
    RosenbrockTask,
    TransformerSpec,
    build,
)
from lopt.tasks.train import BatchGrowth, TrainResult, evaluate, train, train_step

__all__ = [
    "Task",
    "TaskFamily",
    "TaskSpec",
    "FAMILIES",
    "NAMED_TASKS",
    "ConvFamily",
    "MLPFamily",
    "QuadraticFamily",
    "TransformerFamily",
    "get_family",
    "get_task",
    "task_spec",
    "ClassificationTask",
    "ConvSpec",
    "LanguageModelTask",
    "MLPSpec",
    "QuadraticSpec",
    "QuadraticTask",
    "RegressionSpec",
    "RegressionTask",
    "RosenbrockSpec",
    "RosenbrockTask",
    "TransformerSpec",
    "build",
    "BatchGrowth",
    "TrainResult",
    "evaluate",
    "train",
    "train_step",
]
